"""Morphology of the galaxy in a stamp, measured with photutils (segmentation, sizes, shape, companions, aperture
photometry) and statmorph (concentration, asymmetry, Gini, M20, Sersic index).

Measurements are made on the stored pixel values (uint8 / 255: for most datasets an asinh stretch of the
survey's fluxes, stated in the dataset's ``dataset.json``), after subtracting a sky level estimated on the
stamp's border. They rank galaxies of one dataset against each other reliably, but a stretch flattens
light profiles, so sizes and concentrations are not the catalogue values a survey pipeline measures on
calibrated fluxes.

One stamp is segmented once: the segment at the centre (or, if the centre is sky, the brightest) is the
galaxy; any other segment holding at least ``companion_min_flux`` of the galaxy's flux and at least
``companion_min_area`` of the stamp's area counts as a second source (a companion galaxy or a star). The
area floor keeps star-forming knots of a face-on disc, which deblending splits off, from counting.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

# columns of ``measure`` in order; the statmorph ones are NaN for galaxies not given to statmorph
CHEAP_COLUMNS = ("r50", "r90", "axis_ratio", "position_angle", "surface_brightness", "galaxy_flux",
                 "has_companion", "companion_flux_ratio", "companion_x", "companion_y", "detected")
STATMORPH_COLUMNS = ("concentration", "asymmetry", "gini", "m20", "sersic_n", "statmorph_flag")


@dataclass(frozen=True)
class MorphologySettings:
    """How a stamp is segmented and what counts as a second source."""

    detect_sigma: float = 3.0  # detection threshold above the sky, in units of the sky noise
    min_pixels: int = 5  # smallest connected segment
    deblend_contrast: float = 0.05  # photutils deblending contrast
    companion_min_flux: float = 0.1  # a second source holds at least this fraction of the galaxy's flux
    companion_min_area: float = 0.02  # ... and covers at least this fraction of the stamp
    border: int = 2  # width (px) of the stamp border used for the sky level and noise


DEFAULT = MorphologySettings()


def _border(image: np.ndarray, border: int) -> np.ndarray:
    """The pixels within ``border`` of the edge of a 2-D image, each once."""
    return np.concatenate([image[:border].ravel(), image[-border:].ravel(),
                           image[border:-border, :border].ravel(), image[border:-border, -border:].ravel()])


def _sky(image: np.ndarray, border: int) -> tuple[float, float]:
    from astropy.stats import sigma_clipped_stats

    _, median, std = sigma_clipped_stats(_border(image, border), sigma=3.0)
    # A noiseless or saturated border would give zero noise; one grey level is the data's own quantum.
    return float(median), max(float(std), 1.0 / 255.0)


def _segment(image: np.ndarray, s: MorphologySettings):
    """(sky-subtracted image, noise, segmentation or None, label of the galaxy)."""
    from photutils.segmentation import deblend_sources, detect_sources

    sky, noise = _sky(image, s.border)
    data = image - sky
    seg = detect_sources(data, s.detect_sigma * noise, n_pixels=s.min_pixels)
    if seg is None:
        return data, noise, None, 0
    if data.size >= 2 * s.min_pixels:
        seg = deblend_sources(data, seg, n_pixels=s.min_pixels, n_levels=32, contrast=s.deblend_contrast,
                              progress_bar=False)
    H, W = data.shape
    label = int(seg.data[H // 2, W // 2])
    if label == 0:  # sky at the centre: take the segment nearest to it
        ys, xs = np.nonzero(seg.data)
        label = int(seg.data[ys, xs][np.argmin((ys - H / 2) ** 2 + (xs - W / 2) ** 2)])
    return data, noise, seg, label


def measure_one(image: np.ndarray, settings: MorphologySettings = DEFAULT,
                detailed: bool = False) -> dict[str, float]:
    """Measurements of one grey stamp (H, W) in [0, 1]; ``detailed`` adds statmorph's (about 0.2 s a stamp)."""
    from photutils.segmentation import SourceCatalog

    out: dict[str, float] = dict.fromkeys(CHEAP_COLUMNS + STATMORPH_COLUMNS, np.nan)
    data, noise, seg, label = _segment(np.asarray(image, np.float64), settings)
    out["detected"] = seg is not None
    if seg is None:
        out.update(has_companion=False, companion_flux_ratio=0.0)
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cat = SourceCatalog(data, seg)
        fluxes = np.asarray(cat.segment_flux, np.float64)
        areas = np.asarray(getattr(cat.area, "value", cat.area), np.float64)
        i = list(seg.labels).index(label)
        gal = cat[i]
        flux = float(fluxes[i])
        r50, r90 = _value(gal.flux_radius(0.5)), _value(gal.flux_radius(0.9))
        a, b = _value(gal.semimajor_axis), _value(gal.semiminor_axis)
        out.update(r50=r50, r90=r90, axis_ratio=b / a if a > 0 else np.nan, galaxy_flux=flux,
                   position_angle=_value(gal.orientation) % 180.0,
                   surface_brightness=0.5 * flux / (np.pi * r50 ** 2) if r50 > 0 else np.nan)
    ratio = np.where(np.arange(len(fluxes)) == i, 0.0, fluxes / flux if flux > 0 else 0.0)
    big = areas >= settings.companion_min_area * data.size
    cand = np.flatnonzero((ratio >= settings.companion_min_flux) & big)
    out["companion_flux_ratio"] = float(ratio[big].max(initial=0.0))
    out["has_companion"] = len(cand) > 0
    if len(cand):
        j = cand[np.argmax(ratio[cand])]
        out["companion_x"], out["companion_y"] = float(cat.x_centroid[j]), float(cat.y_centroid[j])
    if detailed:
        out.update(_statmorph(data, noise, seg, label))
    return out


def _value(x) -> float:
    """A photutils scalar (a Quantity in pixels or degrees, or a plain number) as a float."""
    return float(np.asarray(getattr(x, "value", x)).ravel()[0])


def _statmorph(data: np.ndarray, noise: float, seg, label: int) -> dict[str, float]:
    import statmorph

    mask = (seg.data > 0) & (seg.data != label)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            m = statmorph.SourceMorphology(data, (seg.data == label).astype(np.int32), 1, mask=mask,
                                           weightmap=np.full_like(data, noise), sersic_maxiter=200)
            vals = {"concentration": m.concentration, "asymmetry": m.asymmetry, "gini": m.gini, "m20": m.m20,
                    "sersic_n": m.sersic_n, "statmorph_flag": m.flag}
        except Exception:  # statmorph gives up on some shapes (too small, all masked); the row says so
            return {"statmorph_flag": 4.0}
    return {k: float(v) if v is not None and np.isfinite(v) else np.nan for k, v in vals.items()}


def measure(images: Iterable[np.ndarray] | np.ndarray, detailed: np.ndarray | None = None,
            settings: MorphologySettings = DEFAULT) -> pd.DataFrame:
    """One row of measurements per image of ``images`` (N, C, H, W) or (N, H, W), uint8 or [0, 1] floats.

    Colour stamps are measured on their mean over channels. ``detailed`` (N,) bool chooses the images that
    also get statmorph's measurements; by default all do."""
    rows = []
    with warnings.catch_warnings():  # "no sources found" and statmorph's fit notes: the row's values say so
        warnings.simplefilter("ignore")
        for n, img in enumerate(images):
            img = np.asarray(img)
            grey = img.astype(np.float64) / (255.0 if img.dtype == np.uint8 else 1.0)
            if grey.ndim == 3:
                grey = grey.mean(0)
            rows.append(measure_one(grey, settings, detailed=True if detailed is None else bool(detailed[n])))
    frame = pd.DataFrame(rows, columns=list(CHEAP_COLUMNS + STATMORPH_COLUMNS))
    frame["has_companion"] = frame["has_companion"].astype(bool)
    frame["detected"] = frame["detected"].astype(bool)
    return frame


def companions_in(images: np.ndarray, settings: MorphologySettings = DEFAULT) -> np.ndarray:
    """(N,) bool: which of ``images`` have a second source in the stamp (photutils only, a few ms each)."""
    return measure(images, detailed=np.zeros(len(images), bool), settings=settings)["has_companion"].to_numpy()


# For choosing companion-free galaxies (deblending) a missed companion costs more than a rejected clean galaxy:
# a lower threshold and no area floor find 94% of the demo simulation's companions (and reject ~60% of clean
# galaxies, mostly clumpy discs).
STRICT = MorphologySettings(detect_sigma=2.0, companion_min_flux=0.02, companion_min_area=0.0)


def strictly_companion_free(images: np.ndarray) -> np.ndarray:
    """(N,) bool: no second source at all in the stamp, by the strict settings ``STRICT``."""
    return ~companions_in(images, STRICT)


def companion_mask(image: np.ndarray, grow: int = 2) -> np.ndarray:
    """(H, W) bool: the pixels of every source in ``image`` (uint8 (C, H, W) or (H, W)) other than the central
    galaxy, by the strict settings, grown by ``grow`` pixels to cover their faint wings."""
    from scipy import ndimage

    grey = np.asarray(image, np.float64) / 255.0
    grey = grey.mean(0) if grey.ndim == 3 else grey
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, _, seg, label = _segment(grey, STRICT)
    if seg is None:
        return np.zeros(grey.shape, bool)
    other = (seg.data > 0) & (seg.data != label)
    return ndimage.binary_dilation(other, iterations=grow) if grow and other.any() else other


def aperture_flux(images: np.ndarray, x: np.ndarray, y: np.ndarray, radius: float | np.ndarray,
                  border: int = 2) -> np.ndarray:
    """Sky-subtracted flux in a circle of ``radius`` px (one for all, or one per image) at column ``x``, row ``y``
    of each image (N, C, H, W) (or (N, H, W)); the sky is the median of the image's border."""
    from photutils.aperture import CircularAperture, aperture_photometry

    imgs = np.asarray(images, np.float64)
    if imgs.ndim == 4:
        imgs = imgs.mean(1)
    radii = np.broadcast_to(np.asarray(radius, np.float64), (len(imgs),))
    out = np.empty(len(imgs))
    for i, img in enumerate(imgs):
        ap = CircularAperture((float(x[i]), float(y[i])), r=float(radii[i]))
        out[i] = float(aperture_photometry(img - np.median(_border(img, border)), ap)["aperture_sum"][0])
    return out
