"""Morphology of the galaxy in a stamp, measured with photutils (segmentation, sizes, shape, companions, aperture
photometry) and statmorph (concentration, asymmetry, Gini, M20, Sersic index).

Measurements are made on linear flux where the dataset records its display stretch (``pixel_stretch`` in
``dataset.json``, see :mod:`astrovader.data.stretch`): the stored 8-bit values are turned back into flux above the
sky before anything is measured, so sizes, profiles and shapes are those of the light, not of the stretch. Where
no stretch is recorded they are made on the stored values / 255 and are relative: they rank galaxies of one
dataset against each other, but a stretch flattens light profiles. Either way a sky level estimated on the
stamp's border is subtracted first.

Conventions, as in the simulator's catalogue and every figure: ``position_angle`` is the major axis's angle in
degrees counter-clockwise from +x **as the stamp is shown** (row 0 at the top), in [0, 180);
``companion_x``/``companion_y`` are the second source's offset from the stamp's centre in pixels, x to the right
and y **up**.

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

from astrovader.data.noise import border_pixels
from astrovader.data.stretch import PixelStretch

# columns of ``measure`` in order; the statmorph ones are NaN for galaxies not given to statmorph
CHEAP_COLUMNS = ("r50", "r90", "axis_ratio", "position_angle", "surface_brightness", "galaxy_flux",
                 "has_companion", "companion_flux_ratio", "companion_x", "companion_y", "detected")
STATMORPH_COLUMNS = ("concentration", "asymmetry", "gini", "m20", "sersic_n", "sersic_rhalf", "statmorph_flag")


@dataclass(frozen=True)
class MorphologySettings:
    """How a stamp is segmented and what counts as a second source."""

    detect_sigma: float = 3.0  # detection threshold above the sky, in units of the sky noise
    min_pixels: int = 5  # smallest connected segment
    deblend_contrast: float = 0.05  # photutils deblending contrast
    companion_min_flux: float = 0.1  # a second source holds at least this fraction of the galaxy's flux
    companion_min_area: float = 0.02  # ... and covers at least this fraction of the stamp
    border: int = 2  # width (px) of the stamp border used for the sky level and noise
    # ... and lies outside this many of the galaxy's R90 from its centre, unless it holds at least
    # ``companion_bright`` of its flux: deblending splits the knots of a clumpy disc off inside its light
    companion_min_separation: float = 0.7
    companion_bright: float = 0.5
    # The galaxy's segment given to statmorph is detected this low (in sky-noise units), so that the Sersic fit
    # sees the profile's wings: at 3 sigma it saw only the cores of the demo's edge-on discs and fitted n ~ 3.
    statmorph_sigma: float = 1.0


DEFAULT = MorphologySettings()


def _sky(image: np.ndarray, border: int, quantum: float) -> tuple[float, float]:
    from astropy.stats import sigma_clipped_stats

    _, median, std = sigma_clipped_stats(border_pixels(image[None], border)[0], sigma=3.0)
    # A noiseless or saturated border would give zero noise; one grey level is the data's own quantum.
    return float(median), max(float(std), quantum)


def _segment(image: np.ndarray, s: MorphologySettings, quantum: float = 1.0 / 255.0):
    """(sky-subtracted image, noise, segmentation or None, label of the galaxy)."""
    from photutils.segmentation import deblend_sources, detect_sources

    sky, noise = _sky(image, s.border, quantum)
    data = image - sky
    seg = detect_sources(data, s.detect_sigma * noise, n_pixels=s.min_pixels)
    if seg is None:
        return data, noise, None, 0
    if data.size >= 2 * s.min_pixels:
        seg = deblend_sources(data, seg, n_pixels=s.min_pixels, n_levels=32, contrast=s.deblend_contrast,
                              progress_bar=False)
    return data, noise, seg, _central_label(seg.data)


def _central_label(labels: np.ndarray) -> int:
    """The segment at the stamp's centre, or, where the centre is sky, the segment nearest to it."""
    H, W = labels.shape
    label = int(labels[H // 2, W // 2])
    if label == 0:
        ys, xs = np.nonzero(labels)
        label = int(labels[ys, xs][np.argmin((ys - H / 2) ** 2 + (xs - W / 2) ** 2)])
    return label


def measure_one(image: np.ndarray, settings: MorphologySettings = DEFAULT, detailed: bool = False,
                quantum: float = 1.0 / 255.0, psf: np.ndarray | None = None) -> dict[str, float]:
    """Measurements of one grey stamp (H, W) of flux (or stored values / 255); ``detailed`` adds statmorph's
    (about 0.2 s a stamp). ``quantum`` is the smallest step of the data at the sky, a floor for its noise."""
    from photutils.segmentation import SourceCatalog

    out: dict[str, float] = dict.fromkeys(CHEAP_COLUMNS + STATMORPH_COLUMNS, np.nan)
    data, noise, seg, label = _segment(np.asarray(image, np.float64), settings, quantum)
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
    ratio = np.where(np.arange(len(fluxes)) == i, 0.0, fluxes / flux if flux > 0 else 0.0)
    big = areas >= settings.companion_min_area * data.size
    separation = np.hypot(np.asarray(cat.x_centroid) - _value(gal.x_centroid),
                          np.asarray(cat.y_centroid) - _value(gal.y_centroid))
    apart = (separation >= settings.companion_min_separation * r90) | (ratio >= settings.companion_bright)
    cand = np.flatnonzero((ratio >= settings.companion_min_flux) & big & apart)
    # only second sources are masked: deblending also splits a dust-laned disc, and masking its halves made
    # the demo's edge-on discs look rounder (median axis ratio 0.42 instead of 0.39)
    q, pa = _shape(data, np.isin(seg.data, np.asarray(seg.labels)[cand]), noise)
    out.update(r50=r50, r90=r90, axis_ratio=q, galaxy_flux=flux, position_angle=pa,
               surface_brightness=0.5 * flux / (np.pi * r50 ** 2) if r50 > 0 else np.nan)
    out["companion_flux_ratio"] = float(ratio[big].max(initial=0.0))
    out["has_companion"] = len(cand) > 0
    if len(cand):
        j = cand[np.argmax(ratio[cand])]
        H, W = data.shape
        out["companion_x"] = float(cat.x_centroid[j]) - (W - 1) / 2
        out["companion_y"] = (H - 1) / 2 - float(cat.y_centroid[j])
    if detailed:
        out.update(_statmorph(data, noise, settings, psf))
    return out


def _shape(data: np.ndarray, others: np.ndarray, noise: float) -> tuple[float, float]:
    """(axis ratio, position angle) of the light from GalSim's adaptive moments, other sources given zero weight.

    Adaptive (Gaussian-weighted) moments see the whole profile instead of the part of it above a detection
    isophote, which made thin edge-on discs look twice as round as they are. The angle is counter-clockwise from
    +x as shown; the image is flipped so that GalSim's y axis points up the stamp."""
    import galsim

    weight = galsim.Image(np.ascontiguousarray((~others)[::-1].astype(np.float64)))
    try:
        m = galsim.Image(np.ascontiguousarray(data[::-1])).FindAdaptiveMom(weight=weight)
    except galsim.GalSimError:  # no convergence (a very faint or very odd source): the row says so with NaN
        return np.nan, np.nan
    if m.moments_status != 0 or not np.isfinite(m.moments_sigma):
        return np.nan, np.nan
    return float(m.observed_shape.q), float(np.degrees(m.observed_shape.beta.rad) % 180.0)


def _value(x) -> float:
    """A photutils scalar (a Quantity in pixels or degrees, or a plain number) as a float."""
    return float(np.asarray(getattr(x, "value", x)).ravel()[0])


def _statmorph(data: np.ndarray, noise: float, settings: MorphologySettings,
               psf: np.ndarray | None) -> dict[str, float]:
    import statmorph

    seg, label = _deep_segment(data, noise, settings)
    if seg is None:
        return {"statmorph_flag": 4.0}
    mask = (seg.data > 0) & (seg.data != label)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            m = statmorph.SourceMorphology(data, (seg.data == label).astype(np.int32), 1, mask=mask,
                                           weightmap=np.full_like(data, noise), psf=psf, sersic_maxiter=200)
            vals = {"concentration": m.concentration, "asymmetry": m.asymmetry, "gini": m.gini, "m20": m.m20,
                    "sersic_n": m.sersic_n, "sersic_rhalf": m.sersic_rhalf, "statmorph_flag": m.flag}
        except Exception:  # statmorph gives up on some shapes (too small, all masked); the row says so
            return {"statmorph_flag": 4.0}
    return {k: float(v) if v is not None and np.isfinite(v) else np.nan for k, v in vals.items()}


def _deep_segment(data: np.ndarray, noise: float, s: MorphologySettings):
    """The galaxy's segment detected at ``statmorph_sigma`` (deblended as the shallow one), and its label."""
    from photutils.segmentation import deblend_sources, detect_sources

    seg = detect_sources(data, s.statmorph_sigma * noise, n_pixels=s.min_pixels)
    if seg is None:
        return None, 0
    seg = deblend_sources(data, seg, n_pixels=s.min_pixels, n_levels=32, contrast=s.deblend_contrast,
                          progress_bar=False)
    return seg, _central_label(seg.data)


def psf_image(meta: dict, size: int = 15) -> np.ndarray | None:
    """The stamps' typical PSF as a normalised (size, size) image, where the dataset records it (``psf``: a Moffat
    FWHM in arcsec and beta, with ``pixel_scale_arcsec``), for statmorph's PSF-convolved Sersic fit; else None."""
    rec, scale = meta.get("psf"), meta.get("pixel_scale_arcsec")
    if not isinstance(rec, dict) or rec.get("kind") != "moffat" or not isinstance(scale, int | float):
        return None
    import galsim

    img = galsim.Moffat(beta=float(rec["beta"]), fwhm=float(rec["fwhm_arcsec"])).drawImage(
        nx=size, ny=size, scale=float(scale)).array
    return img / img.sum()


def measure(images: Iterable[np.ndarray] | np.ndarray, detailed: np.ndarray | None = None,
            settings: MorphologySettings = DEFAULT, stretch: PixelStretch | None = None,
            psf: np.ndarray | None = None) -> pd.DataFrame:
    """One row of measurements per image of ``images`` (N, C, H, W) or (N, H, W), uint8 or [0, 1] floats.

    ``stretch`` (the dataset's recorded display stretch) turns the stored values back into linear flux first;
    without it the stored values / 255 are measured. Colour stamps are measured on their mean over channels.
    ``detailed`` (N,) bool chooses the images that also get statmorph's measurements; by default all do. ``psf``
    (a normalised image, :func:`psf_image`) lets statmorph fit PSF-convolved Sersic profiles."""
    rows = []
    quantum = stretch.grey_level_at_sky() if stretch is not None else 1.0 / 255.0
    with warnings.catch_warnings():  # "no sources found" and statmorph's fit notes: the row's values say so
        warnings.simplefilter("ignore")
        for n, img in enumerate(images):
            grey = to_flux(np.asarray(img), stretch)
            if grey.ndim == 3:
                grey = grey.mean(0)
            rows.append(measure_one(grey, settings, detailed=True if detailed is None else bool(detailed[n]),
                                    quantum=quantum, psf=psf))
    frame = pd.DataFrame(rows, columns=list(CHEAP_COLUMNS + STATMORPH_COLUMNS))
    frame["has_companion"] = frame["has_companion"].astype(bool)
    frame["detected"] = frame["detected"].astype(bool)
    return frame


def to_flux(images: np.ndarray, stretch: PixelStretch | None) -> np.ndarray:
    """Linear flux above the sky of stored images (uint8, or floats in [0, 1]) where the stretch is known, else
    the stored values in [0, 1]."""
    if stretch is not None:
        return stretch.flux(images)
    return images.astype(np.float64) / (255.0 if images.dtype == np.uint8 else 1.0)


def companions_in(images: np.ndarray, settings: MorphologySettings = DEFAULT,
                  stretch: PixelStretch | None = None) -> np.ndarray:
    """(N,) bool: which of ``images`` have a second source in the stamp (photutils only, a few ms each)."""
    return measure(images, detailed=np.zeros(len(images), bool), settings=settings,
                   stretch=stretch)["has_companion"].to_numpy()


# For choosing companion-free galaxies (deblending) a missed companion costs more than a rejected clean galaxy:
# a lower threshold and no area floor find 94% of the demo simulation's companions (and reject ~60% of clean
# galaxies, mostly clumpy discs).
STRICT = MorphologySettings(detect_sigma=2.0, companion_min_flux=0.02, companion_min_area=0.0,
                            companion_min_separation=0.0)


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
        sky = np.median(border_pixels(img[None], border)[0])
        out[i] = float(aperture_photometry(img - sky, ap)["aperture_sum"][0])
    return out
