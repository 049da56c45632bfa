"""The sky noise of a dataset's stamps, measured once and added to synthetic stamps so they stand in for survey ones.

The decoder returns the expected stamp given a latent vector: smooth and noiseless, where every real stamp has
sky noise. :func:`measure_sky_noise` measures the noise on the stamps' borders, in linear flux where the dataset
records its stretch (:mod:`astrovader.data.stretch`), else in stored values / 255:

* ``sigma``: per pixel, from the upper half of the border's distribution (the 84th percentile minus the median).
  A stretch whose zero lies a little below the sky clips negative excursions to 0 (the demo's clips about a third
  of its sky pixels), which shrinks a plain standard deviation; the upper half is untouched by that clipping.
* ``correlation``: of horizontally neighbouring border pixels (resampled or JPEG-compressed stamps have
  correlated noise; simulated Poisson noise has none).

:meth:`SkyNoise.add` puts the synthetic stamp's sky at zero flux (the decoder's sky is the mean of stretched,
clipped noise, which inverts to a few counts above it), adds Gaussian noise of that ``sigma`` smoothed to that
``correlation``, and stores the result through the same stretch, clipping included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from astrovader.data.stretch import PixelStretch

BORDER = 2  # px of each stamp's edge taken as sky


def _borders(images: np.ndarray, border: int = BORDER) -> np.ndarray:
    """(N, B) the border pixels of each (grey) image (N, H, W), each once."""
    top, bottom = images[:, :border].reshape(len(images), -1), images[:, -border:].reshape(len(images), -1)
    left = images[:, border:-border, :border].reshape(len(images), -1)
    right = images[:, border:-border, -border:].reshape(len(images), -1)
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
        """Width (px) of the Gaussian that smooths white noise to ``correlation`` between neighbours: white noise
        smoothed by a Gaussian of width s has neighbour correlation exp(-1 / (4 s^2))."""
        c = float(np.clip(self.correlation, 0.0, 0.95))
        return float(np.sqrt(-1.0 / (4.0 * np.log(c)))) if c >= 0.05 else 0.0

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
            sky = np.median(_borders(flux.reshape(-1, *flux.shape[-2:])), axis=1).reshape(flux.shape[:2])
            stored = self.stretch.forward(flux - sky[..., None, None] + noise)
        else:
            stored = images.astype(np.float64) / 255.0 + noise
        return np.clip(np.rint(stored * 255.0), 0, 255).astype(np.uint8)


def measure_sky_noise(images: np.ndarray, stretch: PixelStretch | None) -> SkyNoise:
    """The sky noise of uint8 stamps ``images`` (N, C, H, W) (see the module docstring); channels are measured
    together."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] <= 2 * BORDER or len(images) == 0:
        raise ValueError(f"need stamps (N, C, H, W) larger than {2 * BORDER} px to measure sky noise, got "
                         f"{images.shape}")
    values = stretch.flux(images) if stretch is not None else images.astype(np.float64) / 255.0
    grey = values.reshape(-1, *values.shape[-2:])
    border = _borders(grey)
    centred = border - np.median(border, axis=1, keepdims=True)
    sigma = float(np.median(np.percentile(centred, 84.13, axis=1)))
    strips = np.concatenate([grey[:, :BORDER], grey[:, -BORDER:]], axis=1)  # rows along the top and bottom
    strips = strips - np.median(strips, axis=(1, 2), keepdims=True)
    a, b = strips[..., :-1].ravel(), strips[..., 1:].ravel()
    correlation = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0
    return SkyNoise(sigma=sigma, correlation=max(correlation, 0.0), stretch=stretch)


def dataset_sky_noise(ds, n: int = 512, seed: int = 0) -> SkyNoise:
    """:func:`measure_sky_noise` of a seeded sample of up to ``n`` stamps of dataset ``ds`` (a
    :class:`~astrovader.data.dataset.Dataset`), through the stretch its ``dataset.json`` records."""
    rows = np.sort(np.random.default_rng(seed).choice(len(ds), min(n, len(ds)), replace=False))
    return measure_sky_noise(ds.take(rows), PixelStretch.from_meta(ds.meta))
