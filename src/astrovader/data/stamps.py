"""Stamps: how each decoded image becomes a dataset row.

Preprocessing follows the paper (section 2): centre crop, grey scale by averaging the bands, antialiased resize
to ``size`` x ``size`` and storage as uint8. For the paper's 256 px SDSS cut-outs a crop of 192/256 is exactly
its central 192 px (pixels 32..223). ``flux_level`` scales every stamp to the same mean grey level, so that a
survey's range of surface brightness does not dominate what a model learns about shape
(:meth:`Crop.describe` records it, e.g. ``3xR90+derotate+flux20``).

Galaxy frames centre, scale and (optionally) orient each cut-out on its own central galaxy.

Fixed-scale survey cut-outs (the GZ1 SDSS JPEGs, most FITS cut-outs) show galaxies at every apparent size
and position angle, and a network trained on them spends its latent space on size and orientation. The
paper's cut-outs avoid the first by construction: their pixel scale is 0.02 x petroR90_r, so every galaxy's
90%-light radius spans the same number of pixels. Where that scale is not known in advance, it is measured
here from the image itself:

1. background and noise from the median and MAD of the outer border;
2. a Gaussian-smoothed detection image thresholded at max(2 sigma, 3% of its peak) and labelled into
   connected segments (``scipy.ndimage``); the galaxy is the segment under the frame centre (or the nearest
   one within 5% of the frame side), grown by 3 px so faint outskirts count;
3. flux-weighted centroid and second moments over that segment give the axis ratio and the position angle
   of the major axis; the radius containing 90% of the segment's flux is R90.

The stamp is then one affine resample of the frame (PIL), ``multiple x R90`` on a side, centred on the
centroid and, with ``derotate``, turned so that the major axis is horizontal. The frame is smoothed first
when it is shrunk by more than 1.5x, so the resample does not alias. Companions that touch the galaxy in
the detection image are part of its segment (no deblending), which inflates R90 for close pairs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np

from astrovader.data.decode import ImageReadError
from astrovader.errors import InputError

DEFAULT_CROP = 0.75  # paper: central 192 of 256 px
DEFAULT_SIZE = 128
FLUX_LEVEL = 20.0  # mean grey level of a flux-normalised stamp: the median of unnormalised 3xR90 GZ1 stamps

# A detection threshold well above the noise separates most companions from the galaxy (there is no
# deblending); growing the segment afterwards brings back the outskirts the threshold cut off.
DETECT_FRACTION = 0.03  # of the smoothed peak
GROW = 3  # px


class NoGalaxyError(InputError):
    """No source was detected at the centre of the frame."""


@dataclass(frozen=True)
class GalaxyShape:
    """The central galaxy of a frame, in input pixels (x to the right, y down; angle from +x towards +y)."""

    x: float
    y: float
    r50: float
    r90: float
    axis_ratio: float  # b / a from the second moments, in (0, 1]
    angle: float  # position angle of the major axis, radians
    background: float


def measure_galaxy(grey: np.ndarray, smooth: float = 1.5) -> GalaxyShape:
    """Measure the galaxy at the centre of a 2-d image (any flux units)."""
    from scipy import ndimage as ndi

    a = np.asarray(grey, dtype=np.float32)
    h, w = a.shape
    edge = max(2, min(h, w) // 20)
    border = np.concatenate([a[:edge].ravel(), a[-edge:].ravel(), a[:, :edge].ravel(), a[:, -edge:].ravel()])
    background = float(np.median(border))
    sigma = float(1.4826 * np.median(np.abs(border - background)))
    d = a - background
    s = ndi.gaussian_filter(d, smooth)
    peak = float(s.max())
    if not peak > 0:
        raise NoGalaxyError("no source above the background (the image is flat or empty)")
    labels, _ = ndi.label(s > max(2.0 * sigma, DETECT_FRACTION * peak))
    cy, cx = h // 2, w // 2
    label = labels[cy, cx]
    if label == 0:
        reach = max(2, min(h, w) // 20)
        window = labels[max(cy - reach, 0):cy + reach + 1, max(cx - reach, 0):cx + reach + 1]
        yy, xx = np.nonzero(window)
        if len(yy) == 0:
            raise NoGalaxyError(f"no source within {reach} px of the frame centre")
        oy, ox = max(cy - reach, 0), max(cx - reach, 0)
        nearest = np.argmin((yy + oy - cy) ** 2 + (xx + ox - cx) ** 2)
        label = window[yy[nearest], xx[nearest]]
    mask = ndi.binary_dilation(labels == label, iterations=GROW)
    ys, xs = np.nonzero(mask)
    f = np.clip(d[ys, xs], 0, None).astype(np.float64)
    total = f.sum()
    if not total > 0:
        raise NoGalaxyError("the central source has no flux above the background")
    x0, y0 = (f * xs).sum() / total, (f * ys).sum() / total
    dx, dy = xs - x0, ys - y0
    cov = np.array([[(f * dx * dx).sum(), (f * dx * dy).sum()], [(f * dx * dy).sum(), (f * dy * dy).sum()]]) / total
    evals, evecs = np.linalg.eigh(cov)
    axis_ratio = float(np.sqrt(max(evals[0], 1e-12) / max(evals[1], 1e-12)))
    angle = float(np.arctan2(evecs[1, 1], evecs[0, 1]))
    r = np.hypot(dx, dy)
    order = np.argsort(r)
    cum = np.cumsum(f[order]) / total
    r_sorted = r[order]
    r50 = float(r_sorted[min(np.searchsorted(cum, 0.5), len(r) - 1)])
    r90 = float(r_sorted[min(np.searchsorted(cum, 0.9), len(r) - 1)])
    return GalaxyShape(float(x0), float(y0), max(r50, 0.5), max(r90, 1.0), min(axis_ratio, 1.0), angle,
                       background)


def galaxy_stamp(planes: list[np.ndarray], shape: GalaxyShape, side: float, size: int,
                 derotate: bool) -> list[np.ndarray]:
    """Resample each plane to ``size`` x ``size``: a square of ``side`` input pixels on the galaxy's centroid,
    rotated so its major axis is horizontal when ``derotate``. Outside the frame is the background level."""
    from PIL import Image
    from scipy import ndimage as ndi

    k = side / size  # input pixels per output pixel
    angle = shape.angle if derotate else 0.0
    c, s = np.cos(angle), np.sin(angle)
    u0 = -(size - 1) / 2.0  # output pixel centres relative to the stamp centre
    # PIL maps each output pixel (u, v) to the input (a u + b v + c, d u + e v + f); pixel centres sit at +0.5.
    coeffs = (k * c, -k * s, shape.x + 0.5 + k * (c * (u0 - 0.5) - s * (u0 - 0.5)),
              k * s, k * c, shape.y + 0.5 + k * (s * (u0 - 0.5) + c * (u0 - 0.5)))
    out = []
    for plane in planes:
        p = np.asarray(plane, dtype=np.float32) - np.float32(shape.background)
        if k > 1.5:
            p = ndi.gaussian_filter(p, 0.5 * k)
        img = Image.fromarray(np.ascontiguousarray(p), mode="F")
        res = img.transform((size, size), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
        out.append(np.asarray(res) + np.float32(shape.background))
    return out


# ------------------------------------------------------------------------------------------------
# crop specification and preprocessing
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Crop:
    """Where each stamp is cut from its frame.

    A centre crop as a fraction of the shorter side (``fraction``) or an absolute side (``pixels``); or, with
    ``r90``, a galaxy frame: ``r90`` times the central galaxy's measured 90%-light radius on a side, centred
    on the galaxy (:mod:`astrovader.data.stamps`), which gives fixed-scale cut-outs the paper's
    Petrosian-scaled framing. ``derotate`` turns the central galaxy's major axis horizontal, in any mode.
    ``flux_level`` multiplies each finished stamp so its mean is that grey level (all bands together, so colours
    are kept): bright and faint galaxies of one shape then look alike. At ``FLUX_LEVEL`` = 20 about 5% of
    3xR90 GZ1 stamps clip a few core pixels at 255 (0.01% of all pixels)."""

    fraction: float | None = DEFAULT_CROP
    pixels: int | None = None
    r90: float | None = None
    derotate: bool = False
    flux_level: float | None = None

    @property
    def measures_galaxy(self) -> bool:
        return self.r90 is not None or self.derotate

    def side(self, height: int, width: int) -> int:
        short = min(height, width)
        if self.pixels is not None:
            if self.pixels > short:
                raise ImageReadError(f"image is {width}x{height} px, smaller than the {self.pixels} px crop")
            return int(self.pixels)
        return max(1, int(round(float(self.fraction or 1.0) * short)))

    def describe(self) -> str:
        if self.r90 is not None:
            base = f"{self.r90:g}xR90"
        else:
            base = f"{self.pixels}px" if self.pixels is not None else f"{self.fraction:g}"
        return (base + ("+derotate" if self.derotate else "")
                + (f"+flux{self.flux_level:g}" if self.flux_level is not None else ""))


_R90_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*[x*]?\s*r90\s*$", re.IGNORECASE)


def parse_crop(value: str | float | int | Crop | None, *, pixels: int | None = None,
               derotate: bool = False, flux_level: float | None = None) -> Crop:
    """Accept ``0.75``, ``"0.75"``, ``"192/256"`` (a fraction), ``"3xR90"`` (a galaxy frame) or ``pixels=192``;
    reject anything else. ``derotate`` and ``flux_level`` apply to any of them."""
    if flux_level is not None and not 0 < float(flux_level) < 255:
        raise InputError(f"flux level must be a mean grey level in (0, 255), got {flux_level}")
    if pixels is not None:
        if value is not None and not isinstance(value, Crop):
            raise InputError("give either a crop fraction (--crop) or a crop size in pixels (--crop-px), not both")
        if int(pixels) < 1:
            raise InputError(f"--crop-px must be a positive number of pixels, got {pixels}")
        crop = Crop(fraction=None, pixels=int(pixels))
    elif value is None:
        crop = Crop()
    elif isinstance(value, Crop):
        crop = value
    elif (m := _R90_RE.match(str(value))) is not None:
        multiple = float(m.group(1))
        if not 0.5 <= multiple <= 50:
            raise InputError(f"--crop: {value!r}: the galaxy frame must be 0.5 to 50 x R90 on a side")
        crop = Crop(fraction=None, r90=multiple)
    else:
        try:
            frac = float(Fraction(str(value).strip()))
        except (ValueError, ZeroDivisionError):
            raise InputError(f"--crop: {value!r} is not a fraction; use e.g. 0.75 or 192/256, 3xR90 for a frame "
                             "scaled to each galaxy (or --crop-px 192 for pixels)") from None
        if not 0 < frac <= 1:
            raise InputError(f"--crop: {value!r} = {frac:g} must be in (0, 1]; use --crop-px for a size in pixels")
        crop = Crop(fraction=frac)
    if derotate and not crop.derotate:
        crop = replace(crop, derotate=True)
    return replace(crop, flux_level=float(flux_level)) if flux_level is not None else crop


def preprocess(arr: np.ndarray, crop: Crop, size: int, colour: bool) -> np.ndarray:
    """Crop (centre or galaxy frame), grey (band mean) or colour, antialiased resize, optional flux
    normalisation; uint8 (C, size, size)."""
    from PIL import Image

    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    h, w, c = arr.shape
    if c not in (1, 3):
        raise ImageReadError(f"wrong number of bands: {c}; expected 1 or 3")
    if colour and c != 3:
        raise ImageReadError(f"wrong number of bands: {c} (grey image) but the dataset keeps colour (--colour)")
    if crop.measures_galaxy:
        planes = _galaxy_frame(arr, crop, size, colour)
    else:
        side = crop.side(h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        arr = arr[y0:y0 + side, x0:x0 + side]
        planes = [arr[:, :, k].astype(np.float32) for k in range(3)] if colour else [_grey(arr)]
    # Resize in float ("F" mode) so the band mean is not rounded twice; LANCZOS antialiases.
    planes = [p if p.shape == (size, size) else np.asarray(
        Image.fromarray(np.ascontiguousarray(p), mode="F").resize((size, size), Image.Resampling.LANCZOS))
        for p in planes]
    stack = np.stack(planes).astype(np.float32, copy=False)
    if crop.flux_level is not None:
        mean = float(stack.mean())
        if not mean > 0:
            raise ImageReadError("blank stamp (mean level 0): cannot normalise its flux")
        stack = stack * np.float32(crop.flux_level / mean)
    return np.clip(np.rint(stack), 0, 255).astype(np.uint8)


def _grey(arr: np.ndarray) -> np.ndarray:
    """The band mean of an (H, W, 1 or 3) image as float32 (the paper's grey scale)."""
    if arr.shape[2] == 1:
        return arr[:, :, 0].astype(np.float32)
    # explicit sum: much faster than mean(axis=2) on a strided uint8 view
    return (arr[:, :, 0].astype(np.float32) + arr[:, :, 1] + arr[:, :, 2]) / np.float32(3)


def _galaxy_frame(arr: np.ndarray, crop: Crop, size: int, colour: bool) -> list[np.ndarray]:
    """The stamp planes of a galaxy frame (``crop.r90``) or a derotated centre crop, at ``size`` px."""
    h, w, _ = arr.shape
    grey = _grey(arr)
    try:
        shape = measure_galaxy(grey)
    except NoGalaxyError as exc:
        raise ImageReadError(f"galaxy frame {crop.describe()}: {exc}") from None
    if crop.r90 is not None:
        side = crop.r90 * shape.r90
    else:  # a fixed crop turned about the frame centre: only the orientation comes from the galaxy
        side = float(crop.side(h, w))
        shape = replace(shape, x=(w - 1) / 2.0, y=(h - 1) / 2.0)
    planes = [arr[:, :, k] for k in range(3)] if colour else [grey]
    return galaxy_stamp(planes, shape, side, size, crop.derotate)
