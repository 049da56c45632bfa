"""The sky noise of a dataset's stamps, measured once and added to synthetic stamps so they stand in for survey ones.

The decoder returns the expected stamp given a latent vector: smooth and noiseless, where every real stamp has
sky noise. :func:`measure_sky_noise` measures the noise on the stamps' borders, in linear flux where the dataset
records its stretch (:mod:`astrovader.data.stretch`), else in stored values / 255:

* ``sigma``: per pixel, from the upper half of the border's distribution (the 84th percentile minus the median).
  A stretch whose zero lies a little below the sky clips negative excursions to 0 (the demo's clips about a third
  of its sky pixels), which shrinks a plain standard deviation; the upper half is untouched by that clipping.
* ``correlation``: of horizontally neighbouring pixels in the stamps' four corners (resampled or JPEG-compressed
  stamps have correlated noise; simulated Poisson noise has none).

:meth:`SkyNoise.add` puts the synthetic stamp's sky at zero flux (the decoder's sky is the mean of stretched,
clipped noise, which inverts to a few counts above it), adds Gaussian noise of that ``sigma`` smoothed to that
``correlation``, and stores the result through the same stretch, clipping included.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from astrovader.data.stretch import PixelStretch
from astrovader.errors import InputError

BORDER = 2  # px of each stamp's edge taken as sky
CORNER = 4  # px: side of the corner squares the neighbour correlation is measured on


@functools.cache
def _filter_correlations() -> tuple[np.ndarray, np.ndarray]:
    """(widths, neighbour correlations) of white noise smoothed by ``gaussian_filter`` of those widths, measured
    once on a seeded 512 x 512 field (a continuous Gaussian's exp(-1 / (4 s^2)) is off for widths under 1 px)."""
    from scipy.ndimage import gaussian_filter

    widths = np.linspace(0.2, 3.0, 57)
    z = np.random.default_rng(0).standard_normal((512, 512))
    corrs = []
    for w in widths:
        f = gaussian_filter(z, w, mode="reflect")
        corrs.append(np.corrcoef(f[:, :-1].ravel(), f[:, 1:].ravel())[0, 1])
    return widths, np.maximum.accumulate(np.asarray(corrs))


def border_pixels(images: np.ndarray, border: int = BORDER) -> np.ndarray:
    """(N, B) the pixels within ``border`` of the edge of each image (N, H, W), each pixel once: where a stamp's
    sky is measured (here, in ``describe``'s morphology and in the report's noise floor)."""
    n = len(images)
    top, bottom = images[:, :border].reshape(n, -1), images[:, -border:].reshape(n, -1)
    left = images[:, border:-border, :border].reshape(n, -1)
    right = images[:, border:-border, -border:].reshape(n, -1)
    return np.concatenate([top, bottom, left, right], axis=1)


@dataclass(frozen=True)
class SkyNoise:
    """Per-pixel sky noise ``sigma`` (in the stretch's unit, or stored / 255 without one), the correlation of
    neighbouring pixels, and the stretch it was measured through (None: stored values)."""

    sigma: float
    correlation: float
    stretch: PixelStretch | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"sigma": float(self.sigma), "correlation": float(self.correlation),
                "stretch": self.stretch.as_meta() if self.stretch else None}

    def smoothing(self) -> float:
        """Width (px) of the Gaussian that smooths white noise to ``correlation`` between neighbours, from the
        neighbour correlation that scipy's discrete Gaussian filter gives (:func:`_filter_correlations`)."""
        c = float(np.clip(self.correlation, 0.0, 0.95))
        if c < 0.05:
            return 0.0
        widths, corrs = _filter_correlations()
        return float(np.interp(c, corrs, widths))

    def field(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Noise of ``shape`` (N, C, H, W): unit-variance Gaussian, smoothed to the correlation, times sigma."""
        z = rng.standard_normal(shape)
        s = self.smoothing()
        if s > 0:
            from scipy.ndimage import gaussian_filter

            z = gaussian_filter(z, sigma=(0, 0, s, s), mode="reflect")
            z /= z.std() or 1.0
        return z * self.sigma

    def add(self, images: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """uint8 ``images`` (N, C, H, W) with the sky set to zero and ``noise`` (from :meth:`field`) added,
        stored through the stretch (clipped to 0..255 as the survey's stamps are)."""
        if self.stretch is not None:
            flux = self.stretch.flux(images)
            sky = np.median(border_pixels(flux.reshape(-1, *flux.shape[-2:])), axis=1).reshape(flux.shape[:2])
            stored = self.stretch.forward(flux - sky[..., None, None] + noise)
        else:
            stored = images.astype(np.float64) / 255.0 + noise
        return np.clip(np.rint(stored * 255.0), 0, 255).astype(np.uint8)


def measure_sky_noise(images: np.ndarray, stretch: PixelStretch | None) -> SkyNoise:
    """The sky noise of uint8 stamps ``images`` (N, C, H, W) (see the module docstring); channels are measured
    together."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] <= 2 * CORNER or len(images) == 0:
        raise InputError(f"need stamps (N, C, H, W) larger than {2 * CORNER} px to measure sky noise, got "
                         f"{images.shape}")
    values = stretch.flux(images) if stretch is not None else images.astype(np.float64) / 255.0
    grey = values.reshape(-1, *values.shape[-2:])
    border = border_pixels(grey)
    centred = border - np.median(border, axis=1, keepdims=True)
    sigma = float(np.median(np.percentile(centred, 84.13, axis=1)))
    # the four corners about the stamp's sky: whole border strips also hold the wings of large galaxies, whose
    # gradient read as correlation (0.14 on the demo's white noise; its corners: 0.04)
    w = CORNER
    corners = np.stack([grey[:, :w, :w], grey[:, :w, -w:], grey[:, -w:, :w], grey[:, -w:, -w:]], axis=1)
    corners = corners - np.median(corners, axis=(1, 2, 3), keepdims=True)
    a, b = corners[..., :-1].ravel(), corners[..., 1:].ravel()
    correlation = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0
    return SkyNoise(sigma=sigma, correlation=max(correlation, 0.0), stretch=stretch)


def dataset_sky_noise(ds, n: int = 512, seed: int = 0) -> SkyNoise:
    """:func:`measure_sky_noise` of a seeded sample of up to ``n`` stamps of dataset ``ds`` (a
    :class:`~astrovader.data.dataset.Dataset`), through the stretch its ``dataset.json`` records."""
    rows = np.sort(np.random.default_rng(seed).choice(len(ds), min(n, len(ds)), replace=False))
    return measure_sky_noise(ds.take(rows), PixelStretch.from_meta(ds.meta))
