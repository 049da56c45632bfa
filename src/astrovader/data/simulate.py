"""Simulated SDSS-like galaxy cut-outs with known morphology, drawn with GalSim.

Three classes (the truth every clustering can be scored against); angular sizes are for a 32 px stamp:

* ``elliptical`` (0): de Vaucouleurs (Sersic n = 4) spheroid, half-light radius 1.0-2.6", axis ratio 0.6-1:
  smooth, centrally concentrated, round-ish;
* ``face_on_disc`` (1): exponential disc, half-light radius 1.6-3.8", axis ratio 0.75-1, with a small
  de Vaucouleurs bulge (8-25% of the light) and 8-24 star-forming knots (``galsim.RandomKnots``, 25-45% of the
  light): low surface brightness, clumpy;
* ``edge_on_disc`` (2): thin exponential disc, half-light radius 2.0-4.0", axis ratio 0.1-0.25, with a small
  flattened bulge (5-25%): long and thin, 0.1 dex fainter than the face-on discs for the dust in its plane
  (inclination dimming, Driver et al. 2007);

ellipticals and face-on discs both have total fluxes of 10^3.9-10^4.5 counts, edge-on discs 10^3.8-10^4.4, and
the sizes overlap too (``DEMO_LOG_FLUX``, ``DEMO_HLR``), so that brightness and size alone do not separate the
classes (RESULTS.md, "The demo made honest").

Every galaxy is at a random position angle, centred to within one pixel, convolved with a Moffat PSF (beta 3-4.8,
FWHM 1.2-1.6"), on a sky of 90-160 counts/px with Poisson noise, at SDSS's 0.396 arcsec/px. A chosen fraction
of stamps also hold a companion (half a small galaxy, half a foreground star) 45-80% of the way from the
centre to the stamp edge (positions in pixels from the centre in the catalogue).

Orientation: as everywhere in astrovader, row 0 of a stored stamp is its top. Catalogue offsets and companion
positions are in pixels from the centre with x to the right and y **up** (towards row 0), and position angles are
measured anticlockwise from the x axis, so they read as drawn in every figure.

Stamp size: the pixel scale is always 0.396"/px, and galaxy sizes scale with ``size / 32`` (fluxes with its
square, keeping surface brightness), so a galaxy fills a stamp of any size alike, as the paper's cut-outs
scaled to 0.02 x petroR90 per pixel do. At 32 px the field is 12.7" across.

Counts are turned into 8-bit pixels with one fixed asinh stretch (``STRETCH_DOC``), like the SDSS colour
JPEGs the paper used, so surface brightness stays information (no per-image normalisation); the sky lands at
a dark grey (about 15/255) and noise scatters both ways around it.

Every object draws its random numbers from ``(seed, index)`` alone, so the output is identical whatever the
number of worker processes or the chunking.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from astrovader.data.dataset import Dataset, DatasetWriter
from astrovader.data.stretch import PixelStretch
from astrovader.errors import InputError

CLASS_NAMES: tuple[str, ...] = ("elliptical", "face_on_disc", "edge_on_disc")
PIXEL_SCALE = 0.396  # arcsec / px, SDSS
REFERENCE_SIZE = 32  # px; angular sizes below are for a 32 px stamp and scale with ``size`` (see module doc)
SKY_RANGE = (90.0, 160.0)  # counts / px, sky level drawn per image; Poisson noise sigma = sqrt(sky)
STRETCH_SOFTENING = 12.0  # counts: the asinh stretch is linear below about this, logarithmic above
STRETCH_MAX = 2500.0  # counts above sky mapped to 255
PSF_BETA = (3.0, 4.8)  # Moffat beta range of the PSF drawn per image
PSF_BETA_MID = 3.9
# The demo's classes overlap in total flux (log10 counts at 32 px) and half-light radius (arcsec at 32 px), so
# that brightness and size alone do not tell them apart and a clustering has to see shape.
DEMO_LOG_FLUX = ((3.9, 4.5), (3.9, 4.5), (3.8, 4.4))
DEMO_HLR = ((1.0, 2.6), (1.6, 3.8), (2.0, 4.0))
SKY_GREY = 0.06  # fraction of 255 where the sky (zero counts above sky) lands: a dark grey, noise both ways
STRETCH_DOC = (f"uint8 = clip(255 * ({SKY_GREY} + {1 - SKY_GREY:.2f}"
               f" * asinh((counts - sky) / {STRETCH_SOFTENING})"
               f" / asinh({STRETCH_MAX} / {STRETCH_SOFTENING})), 0, 255)")


@dataclass(frozen=True)
class Variant:
    """How a simulated survey differs from the default one (which every default field reproduces exactly).

    ``family`` "demo" draws the galaxies described above; "sersic" draws a different population: Sersic
    spheroids with n 2.5-6 and any axis ratio 0.5-1, bulge + disc galaxies at a random inclination (face-on
    discs: axis ratio 0.45-1, no star-forming knots, bulges of 0-40% of the light, n 1-4) and edge-on discs
    without dust dimming, all with overlapping flux ranges, so brightness alone does not tell the classes apart.
    ``flux_dex`` shifts every flux (log10), ``size_factor`` multiplies every size, ``psf_fwhm`` and ``sky`` are the
    ranges drawn per image, ``stretch`` is "asinh" (with ``softening`` and ``stretch_max`` in counts) or "linear"
    (sky to ``stretch_max`` counts), and ``pixel_scale`` is in arcsec/px."""

    family: str = "demo"
    flux_dex: float = 0.0
    size_factor: float = 1.0
    psf_fwhm: tuple[float, float] = (1.2, 1.6)
    sky: tuple[float, float] = SKY_RANGE
    stretch: str = "asinh"
    softening: float = STRETCH_SOFTENING
    stretch_max: float = STRETCH_MAX
    pixel_scale: float = PIXEL_SCALE

    def __post_init__(self) -> None:
        if self.family not in ("demo", "sersic"):
            raise InputError(f"variant family must be 'demo' or 'sersic', got {self.family!r}")
        if self.stretch not in ("asinh", "linear"):
            raise InputError(f"variant stretch must be 'asinh' or 'linear', got {self.stretch!r}")
        if not (self.size_factor > 0 and self.pixel_scale > 0 and self.softening > 0 and self.stretch_max > 0
                and 0 < self.psf_fwhm[0] <= self.psf_fwhm[1] and 0 < self.sky[0] <= self.sky[1]):
            raise InputError(f"variant sizes, scales, PSF and sky ranges must be positive: {self}")

    def describe(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


DEFAULT_VARIANT = Variant()


def pixel_stretch(variant: Variant = DEFAULT_VARIANT) -> PixelStretch:
    """The variant's display stretch, as recorded in the dataset (so measurements can invert it)."""
    return PixelStretch(kind=variant.stretch, zero=SKY_GREY, span=1 - SKY_GREY, softening=variant.softening,
                        maximum=variant.stretch_max, unit="counts")


def _stretch(counts_above_sky: np.ndarray, variant: Variant = DEFAULT_VARIANT) -> np.ndarray:
    """Fixed display stretch (SDSS-JPEG-like asinh by default) to uint8; the same for every image."""
    return np.rint(pixel_stretch(variant).forward(counts_above_sky) * 255).astype(np.uint8)


def _sersic_family(cls: int, rng: np.random.Generator, size_scale: float) -> tuple[Any, dict[str, Any]]:
    """A population unlike the demo's (see :class:`Variant`): unrotated galaxy and its parameters."""
    import galsim

    deg = galsim.degrees
    flux = 10 ** rng.uniform(3.9, 4.5) * size_scale**2
    if cls == 0:
        n = rng.uniform(2.5, 6.0)
        hlr = rng.uniform(0.8, 2.0) * size_scale
        q = rng.uniform(0.5, 1.0)
        gal = galsim.Sersic(n=n, half_light_radius=hlr, flux=flux, trunc=8 * hlr).shear(q=q, beta=0 * deg)
        return gal, dict(flux=flux, half_light_radius=hlr, axis_ratio=q, sersic_n=n, bulge_fraction=1.0,
                         bulge_hlr=hlr, n_knots=0, knot_fraction=0.0)
    hlr = rng.uniform(1.8, 3.6) * size_scale
    q = rng.uniform(0.45, 1.0) if cls == 1 else rng.uniform(0.08, 0.22)
    bulge_frac = rng.uniform(0.0, 0.4) if cls == 1 else rng.uniform(0.0, 0.2)
    bulge_n = rng.uniform(1.0, 4.0)
    bulge_hlr = rng.uniform(0.2, 0.4) * hlr
    disc = galsim.Exponential(half_light_radius=hlr, flux=flux * (1 - bulge_frac)).shear(q=q, beta=0 * deg)
    bulge = galsim.Sersic(n=bulge_n, half_light_radius=bulge_hlr, flux=max(flux * bulge_frac, 1e-6),
                          trunc=8 * bulge_hlr).shear(q=max(q, 0.5), beta=0 * deg)
    return disc + bulge, dict(flux=flux, half_light_radius=hlr, axis_ratio=q, sersic_n=1.0,
                              bulge_fraction=bulge_frac, bulge_hlr=bulge_hlr, n_knots=0, knot_fraction=0.0)


def _galaxy(cls: int, rng: np.random.Generator, gs_rng: Any, size_scale: float,
            variant: Variant = DEFAULT_VARIANT) -> tuple[Any, dict[str, Any]]:
    """The noiseless, unconvolved target galaxy of class ``cls`` and its parameters."""
    import galsim

    pa = rng.uniform(0, 180)
    if variant.family == "sersic":
        gal, p = _sersic_family(cls, rng, size_scale * variant.size_factor)
        p = {"position_angle": pa, **p, "flux": p["flux"] * 10**variant.flux_dex}
        return gal.withScaledFlux(10**variant.flux_dex).rotate(pa * galsim.degrees), p
    if variant != DEFAULT_VARIANT:  # the demo's galaxies, resized and rescaled (they draw their own angle)
        gal, p = _galaxy(cls, rng, gs_rng, size_scale * variant.size_factor)
        p["flux"] *= 10**variant.flux_dex
        return gal.withScaledFlux(10**variant.flux_dex), p
    flux_scale = size_scale**2  # same surface brightness whatever the stamp size
    p: dict[str, Any] = {"position_angle": pa}
    deg = galsim.degrees
    flux = 10 ** rng.uniform(*DEMO_LOG_FLUX[cls]) * flux_scale
    hlr = rng.uniform(*DEMO_HLR[cls]) * size_scale
    if cls == 0:  # smooth, centrally concentrated, round-ish spheroid
        q = rng.uniform(0.6, 1.0)
        gal = galsim.Sersic(n=4.0, half_light_radius=hlr, flux=flux, trunc=8 * hlr).shear(q=q, beta=0 * deg)
        p.update(flux=flux, half_light_radius=hlr, axis_ratio=q, sersic_n=4.0, bulge_fraction=1.0,
                 bulge_hlr=hlr, n_knots=0, knot_fraction=0.0)
    elif cls == 1:  # low surface brightness exponential disc, small bulge, star-forming knots
        q = rng.uniform(0.75, 1.0)
        bulge_frac = rng.uniform(0.08, 0.25)
        knot_frac = rng.uniform(0.25, 0.45)
        n_knots = int(rng.integers(8, 25))
        disc = galsim.Exponential(half_light_radius=hlr, flux=flux * (1 - bulge_frac - knot_frac))
        knots = galsim.RandomKnots(n_knots, half_light_radius=0.9 * hlr, flux=flux * knot_frac, rng=gs_rng)
        gal = (disc + knots).shear(q=q, beta=0 * deg)
        bulge_hlr = 0.3 * hlr
        gal = gal + galsim.DeVaucouleurs(half_light_radius=bulge_hlr, flux=flux * bulge_frac)
        p.update(flux=flux, half_light_radius=hlr, axis_ratio=q, sersic_n=1.0, bulge_fraction=bulge_frac,
                 bulge_hlr=bulge_hlr, n_knots=n_knots, knot_fraction=knot_frac)
    else:  # thin exponential disc seen edge-on, small flattened bulge; dimmed by 0.1 dex of dust in its plane
        q = rng.uniform(0.1, 0.25)
        bulge_frac = rng.uniform(0.05, 0.25)
        bulge_hlr = 0.3 * hlr
        disc = galsim.Exponential(half_light_radius=hlr, flux=flux * (1 - bulge_frac))
        disc = disc.shear(q=q, beta=0 * deg)
        bulge = galsim.DeVaucouleurs(half_light_radius=bulge_hlr, flux=flux * bulge_frac)
        bulge = bulge.shear(q=0.6, beta=0 * deg)
        gal = disc + bulge
        p.update(flux=flux, half_light_radius=hlr, axis_ratio=q, sersic_n=1.0, bulge_fraction=bulge_frac,
                 bulge_hlr=bulge_hlr, n_knots=0, knot_fraction=0.0)
    return gal.rotate(pa * deg), p


_Task = tuple[int, int, int, float, tuple[float, ...], Variant]


def _draw_one(task: _Task) -> tuple[np.ndarray, dict[str, Any]]:
    """One stamp and its catalogue row; every random number comes from ``(seed, index)``."""
    import galsim

    index, seed, size, companion_fraction, class_cdf, variant = task
    rng = np.random.default_rng([seed, index])
    gs_rng = galsim.BaseDeviate(int(rng.integers(1, 2**31 - 1)))
    cls = min(int(np.searchsorted(np.asarray(class_cdf), rng.uniform(), side="right")), len(CLASS_NAMES) - 1)
    size_scale = size / REFERENCE_SIZE  # angular sizes grow with the stamp, so galaxies fill it alike
    gal, p = _galaxy(cls, rng, gs_rng, size_scale, variant)
    fwhm = rng.uniform(*variant.psf_fwhm)
    beta = rng.uniform(*PSF_BETA)
    psf = galsim.Moffat(beta=beta, fwhm=fwhm)
    scale = variant.pixel_scale  # arcsec / px
    dx, dy = rng.uniform(-1.0, 1.0, size=2) * scale  # centring jitter of up to one pixel
    sky = rng.uniform(*variant.sky)
    row: dict[str, Any] = {"true_class": cls, "class_name": CLASS_NAMES[cls], **p, "psf_fwhm": fwhm,
                           "psf_beta": beta, "offset_x": dx / scale, "offset_y": dy / scale,
                           "sky_level": sky, "noise_sigma": float(np.sqrt(sky))}
    scene = gal.shift(dx, dy)
    has_comp = bool(rng.uniform() < companion_fraction)
    row.update(has_companion=has_comp, companion_type="", companion_x=np.nan, companion_y=np.nan,
               companion_flux=np.nan, companion_hlr=np.nan)
    if has_comp:  # a star or a small galaxy away from the centre, inside the stamp
        half = size * scale / 2
        r = rng.uniform(0.45, 0.8) * half
        ang = rng.uniform(0, 2 * np.pi)
        cx, cy = r * np.cos(ang), r * np.sin(ang)
        if rng.uniform() < 0.5:
            cflux, chlr, ctype = 10 ** rng.uniform(3.3, 4.3), 0.0, "star"
            comp = galsim.DeltaFunction(flux=cflux)
        else:
            cflux, ctype = 10 ** rng.uniform(3.3, 4.2) * size_scale**2, "galaxy"
            chlr = rng.uniform(0.5, 1.3) * size_scale
            comp = galsim.Sersic(n=float(rng.choice([1.0, 4.0])), half_light_radius=chlr, flux=cflux,
                                 trunc=8 * chlr)
            comp = comp.shear(q=rng.uniform(0.4, 1.0), beta=rng.uniform(0, 180) * galsim.degrees)
        scene = scene + comp.shift(cx, cy)
        row.update(companion_type=ctype, companion_x=cx / scale, companion_y=cy / scale,
                   companion_flux=cflux, companion_hlr=chlr)
    image = galsim.ImageF(size, size, scale=scale)
    galsim.Convolve(scene, psf).drawImage(image=image)
    image += sky
    image.addNoise(galsim.PoissonNoise(rng=gs_rng))
    # GalSim's row 0 is the bottom of the image (y up); ours is the top: flip, so y and angles read as on the sky.
    return _stretch(image.array[::-1] - sky, variant), row


def _draw_chunk(tasks: list[_Task]) -> list[tuple[np.ndarray, dict[str, Any]]]:
    return [_draw_one(t) for t in tasks]


def _class_cdf(class_fractions: Sequence[float] | None) -> tuple[float, ...]:
    fr = np.ones(len(CLASS_NAMES)) if class_fractions is None else np.asarray(class_fractions, float)
    if fr.shape != (len(CLASS_NAMES),) or not np.isfinite(fr).all() or (fr < 0).any() or fr.sum() <= 0:
        raise InputError(f"class_fractions must be {len(CLASS_NAMES)} non-negative numbers for "
                         f"{', '.join(CLASS_NAMES)}, got {class_fractions}")
    return tuple(float(c) for c in np.cumsum(fr / fr.sum())[:-1])


_CHUNK = 128  # objects per task sent to a worker process
_MIN_PARALLEL = 512  # below this many objects a process pool costs more than it saves


def _iter_simulated(n: int, size: int, seed: int, companion_fraction: float,
                    class_fractions: Sequence[float] | None, workers: int | None, progress: bool,
                    variant: Variant = DEFAULT_VARIANT) -> Iterator[tuple[int, list[tuple[np.ndarray, dict]]]]:
    """Yield ``(first_index, [(pixels, row), ...])`` in index order, chunk by chunk."""
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}")
    if size < 8:
        raise InputError(f"size must be >= 8 pixels, got {size}")
    if not 0 <= companion_fraction <= 1:
        raise InputError(f"companion_fraction must be in [0, 1], got {companion_fraction}")
    if seed < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    cdf = _class_cdf(class_fractions)
    tasks: list[_Task] = [(i, int(seed), int(size), float(companion_fraction), cdf, variant) for i in range(n)]
    chunks = [tasks[i:i + _CHUNK] for i in range(0, n, _CHUNK)]
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    bar = tqdm(total=n, desc="simulating", unit="gal", disable=not progress)
    try:
        if workers <= 1 or n < _MIN_PARALLEL:
            for c in chunks:
                res = _draw_chunk(c)
                bar.update(len(res))
                yield c[0][0], res
        else:
            # A bounded window of chunks in flight keeps memory flat for any n; results come back in order.
            with ProcessPoolExecutor(workers) as pool:
                pending: deque = deque()
                for c in chunks:
                    pending.append((c[0][0], pool.submit(_draw_chunk, c)))
                    if len(pending) >= 4 * workers:
                        first, fut = pending.popleft()
                        res = fut.result()
                        bar.update(len(res))
                        yield first, res
                while pending:
                    first, fut = pending.popleft()
                    res = fut.result()
                    bar.update(len(res))
                    yield first, res
    finally:
        bar.close()


def simulate_galaxies(n: int, size: int = 64, seed: int = 0, companion_fraction: float = 0.2,
                      class_fractions: Sequence[float] | None = None, workers: int | None = None,
                      progress: bool = True, variant: Variant = DEFAULT_VARIANT) -> tuple[np.ndarray, pd.DataFrame]:
    """``n`` simulated galaxies in memory: uint8 images (n, 1, size, size) and their truth catalogue."""
    images = np.empty((n, 1, size, size), np.uint8)
    rows: list[dict[str, Any]] = []
    for first, res in _iter_simulated(n, size, seed, companion_fraction, class_fractions, workers, progress,
                                      variant):
        for k, (pix, row) in enumerate(res):
            images[first + k, 0] = pix
            rows.append({"id": first + k, **row})
    return images, pd.DataFrame(rows)


def simulate(out: str | Path, n: int, size: int = 64, seed: int = 0, companion_fraction: float = 0.2,
             class_fractions: Sequence[float] | None = None, workers: int | None = None,
             progress: bool = True, variant: Variant = DEFAULT_VARIANT) -> Dataset:
    """Simulate galaxies with GalSim straight into a packed dataset, with their truth catalogue.

    Ellipticals, face-on discs with a bulge and clumpy knots, and thin edge-on discs, PSF-convolved with sky noise;
    memory stays bounded for any ``n``. The catalogue holds each galaxy's class, flux, sizes, axis ratio, position
    angle and companion (see the module docstring for the conventions).

    Parameters
    ----------
    out : path-like
        A new (or empty) directory.
    n : int
        Number of galaxies.
    size : int, default 64
        Stamp side in pixels, a multiple of 8.
    seed : int, default 0
        Random seed; the same seed gives the same pixels.
    companion_fraction : float, default 0.2
        Share of galaxies with a companion galaxy or star.
    class_fractions : sequence of float, optional
        Shares of ellipticals, face-on and edge-on discs (default equal).
    workers : int, optional
        Processes drawing galaxies (default: the CPU count).
    progress : bool, default True
        Show a progress bar.
    variant : Variant
        Survey properties (pixel scale, PSF, noise, stretch); the default is the demo's.

    Returns
    -------
    Dataset
        The dataset written.
    """
    out = Path(out)
    if size < 8 or size % 8:
        raise InputError(f"stamp size must be a multiple of 8 pixels (the networks halve an image three times), "
                         f"got {size}")
    if n < 1:
        raise InputError(f"the number of galaxies must be >= 1, got {n}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: already exists and is not an empty directory; "
                              "choose a new output directory")
    meta = {"source": "astrovader.simulate", "seed": int(seed), "n_requested": int(n),
            "pixel_scale_arcsec": variant.pixel_scale, "reference_size_px": REFERENCE_SIZE,
            "companion_fraction": float(companion_fraction), "class_names": list(CLASS_NAMES),
            "class_fractions": None if class_fractions is None else [float(f) for f in class_fractions],
            "stretch": STRETCH_DOC if variant == DEFAULT_VARIANT else variant.stretch,
            "pixel_stretch": pixel_stretch(variant).as_meta(),
            # the typical PSF of these stamps (each draws its own FWHM and beta from these ranges)
            "psf": {"kind": "moffat", "fwhm_arcsec": float(np.mean(variant.psf_fwhm)), "beta": PSF_BETA_MID}}
    if variant != DEFAULT_VARIANT:
        meta["variant"] = variant.describe()
    with DatasetWriter(out, size, 1, meta=meta, commit_every=8192) as writer:
        chunks = _iter_simulated(n, size, seed, companion_fraction, class_fractions, workers, progress, variant)
        for first, res in chunks:
            imgs = np.stack([pix for pix, _ in res])[:, None]
            writer.add(imgs, [{"id": first + k, **row} for k, (_, row) in enumerate(res)])
    return Dataset(out)
