"""Galaxy-frame stamps: centre, scale and (optionally) orient each cut-out on its own central galaxy.

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

from dataclasses import dataclass

import numpy as np

# A detection threshold well above the noise separates most companions from the galaxy (there is no
# deblending); growing the segment afterwards brings back the outskirts the threshold cut off.
DETECT_FRACTION = 0.03  # of the smoothed peak
GROW = 3  # px


class NoGalaxyError(ValueError):
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
