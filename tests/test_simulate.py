"""The built-in GalSim galaxy simulator: determinism, catalogue, pixels, morphology, dataset output, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("galsim")

from astrovader.data.dataset import Dataset  # noqa: E402
from astrovader.data.simulate import CLASS_NAMES, simulate, simulate_galaxies  # noqa: E402

N = 150


@pytest.fixture(scope="module")
def sim() -> tuple[np.ndarray, pd.DataFrame]:
    return simulate_galaxies(N, size=32, seed=7, workers=1, progress=False)


def _elongation(images: np.ndarray) -> np.ndarray:
    """|e| from the second moments of the sky-subtracted light within the central disc of each image."""
    x = images[:, 0].astype(float)
    s = x.shape[-1]
    yy, xx = np.mgrid[:s, :s] - (s - 1) / 2
    w = np.clip(x - np.median(x, axis=(1, 2), keepdims=True), 0, None) * (np.hypot(xx, yy) < s / 2.5)
    m = w.sum((1, 2))
    mxx, myy, mxy = ((w * a * b).sum((1, 2)) / m for a, b in ((xx, xx), (yy, yy), (xx, yy)))
    return np.hypot(mxx - myy, 2 * mxy) / (mxx + myy)


def test_pixels_shape_dtype_range(sim):
    images, cat = sim
    assert images.shape == (N, 1, 32, 32) and images.dtype == np.uint8
    assert len(cat) == N and cat["id"].tolist() == list(range(N))
    # fixed stretch: the sky sits at a dark grey, galaxy centres are brighter, little saturation
    border = np.concatenate([images[:, 0, :2].ravel(), images[:, 0, -2:].ravel()])
    assert 5 < np.median(border) < 40
    centre = images[:, 0, 14:18, 14:18].mean(axis=(1, 2))
    assert (centre > np.median(border) + 20).mean() > 0.95
    assert (images == 255).mean() < 0.01


def test_catalogue_columns(sim):
    _, cat = sim
    for col in ("id", "true_class", "class_name", "flux", "half_light_radius", "sersic_n", "axis_ratio",
                "position_angle", "psf_fwhm", "psf_beta", "sky_level", "noise_sigma", "offset_x", "offset_y",
                "has_companion", "companion_type", "companion_x", "companion_y", "companion_flux"):
        assert col in cat.columns, col
    assert set(cat["class_name"]) <= set(CLASS_NAMES)
    assert (cat["class_name"] == [CLASS_NAMES[c] for c in cat["true_class"]]).all()
    ell, edge = cat[cat.true_class == 0], cat[cat.true_class == 2]
    assert (ell.sersic_n == 4).all() and ell.axis_ratio.between(0.6, 1).all()
    assert edge.axis_ratio.between(0.1, 0.25).all()
    assert cat.psf_fwhm.between(1.2, 1.6).all() and cat.psf_beta.between(3, 4.8).all()
    comp = cat[cat.has_companion]
    assert set(comp.companion_type) <= {"star", "galaxy"} and comp.companion_x.notna().all()
    assert cat[~cat.has_companion].companion_x.isna().all()
    assert (np.hypot(comp.companion_x, comp.companion_y) > 0.4 * 16).all()  # away from the centre


def test_deterministic_and_independent_of_workers(sim):
    images, cat = sim
    images2, cat2 = simulate_galaxies(N, size=32, seed=7, workers=1, progress=False)
    assert np.array_equal(images, images2)
    pd.testing.assert_frame_equal(cat, cat2)
    # a pool (forced by n >= 512) gives the same bytes, and a longer run starts with the same objects
    images3, cat3 = simulate_galaxies(600, size=32, seed=7, workers=2, progress=False)
    assert np.array_equal(images, images3[:N])
    pd.testing.assert_frame_equal(cat, cat3.iloc[:N].reset_index(drop=True))
    other, _ = simulate_galaxies(20, size=32, seed=8, workers=1, progress=False)
    assert not np.array_equal(images[:20], other)


def test_class_fractions_and_companion_fraction():
    _, cat = simulate_galaxies(400, size=16, seed=1, companion_fraction=0.5, class_fractions=[2, 0, 1],
                               workers=1, progress=False)
    counts = cat.true_class.value_counts()
    assert counts.get(1, 0) == 0
    assert abs(counts[0] / 400 - 2 / 3) < 0.08 and abs(counts[2] / 400 - 1 / 3) < 0.08
    assert abs(cat.has_companion.mean() - 0.5) < 0.08
    _, none = simulate_galaxies(50, size=16, seed=1, companion_fraction=0.0, workers=1, progress=False)
    assert not none.has_companion.any()
    with pytest.raises(ValueError, match="class_fractions"):
        simulate_galaxies(5, size=16, class_fractions=[1, 1], progress=False)
    with pytest.raises(ValueError, match="companion_fraction"):
        simulate_galaxies(5, size=16, companion_fraction=1.5, progress=False)


def test_default_class_fractions_equal(sim):
    _, cat = sim
    counts = cat.true_class.value_counts()
    assert set(counts.index) == {0, 1, 2}
    assert (abs(counts / N - 1 / 3) < 0.12).all()


def test_edge_on_more_elongated_than_ellipticals():
    images, cat = simulate_galaxies(120, size=32, seed=3, companion_fraction=0.0, workers=1, progress=False)
    e = _elongation(images)
    y = cat.true_class.to_numpy()
    assert np.median(e[y == 2]) > 2 * np.median(e[y == 0])
    assert np.median(e[y == 2]) > 0.3
    # ellipticals are more concentrated than face-on discs: a larger share of their light sits in the core
    x = images[:, 0].astype(float)
    sky = np.median(np.concatenate([x[:, :2].reshape(len(x), -1), x[:, -2:].reshape(len(x), -1)], 1), axis=1)
    core = (x[:, 14:18, 14:18] - sky[:, None, None]).sum((1, 2)) / (x - sky[:, None, None]).sum((1, 2))
    assert np.median(core[y == 0]) > 1.3 * np.median(core[y == 1])
    # ... but not brighter or smaller as a class: total flux and half-light radius overlap between all classes
    # (the middle half of every class's fluxes overlaps; the sizes overlap between the 10th and 90th percentiles)
    for col, q in (("flux", 0.25), ("half_light_radius", 0.1)):
        lo, hi = cat.groupby("true_class")[col].quantile(q), cat.groupby("true_class")[col].quantile(1 - q)
        assert lo.max() < hi.min(), col


def test_simulate_writes_dataset(tmp_path: Path, sim):
    out = tmp_path / "sim"
    ds = simulate(out, n=N, size=32, seed=7, workers=1, progress=False)
    assert isinstance(ds, Dataset) and len(ds) == N and ds.image_size == 32 and ds.channels == 1
    assert ds.complete and ds.meta["source"] == "astrovader.simulate" and ds.meta["seed"] == 7
    assert np.array_equal(ds.load(), sim[0])
    assert ds.catalog["true_class"].tolist() == sim[1]["true_class"].tolist()
    # an existing, non-empty output is refused clearly, and the dataset is left alone
    with pytest.raises(FileExistsError, match="not an empty directory"):
        simulate(out, n=5, size=32, progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    with pytest.raises(FileExistsError):
        simulate(tmp_path / "junk", n=5, size=32, progress=False)
    assert len(Dataset(out)) == N


def test_cli(tmp_path: Path, capsys):
    from astrovader.cli import main

    out = tmp_path / "cli"
    assert main(["simulate", str(out), "--n", "12", "--size", "16", "--seed", "2", "--companion-fraction",
                 "0.5", "--workers", "1", "--quiet"]) == 0
    line = capsys.readouterr().out
    assert "wrote 12" in line and "elliptical" in line and "edge_on_disc" in line
    assert len(Dataset(out)) == 12
    assert main(["simulate", str(out), "--n", "3", "--quiet"]) == 2
    assert "not an empty directory" in capsys.readouterr().err


def test_default_variant_is_the_default_survey_and_variants_change_it(sim):
    from astrovader.data.simulate import DEFAULT_VARIANT, Variant

    images, cat = sim
    again, _ = simulate_galaxies(N, size=32, seed=7, workers=1, progress=False, variant=Variant())
    np.testing.assert_array_equal(again, images)  # the default variant draws exactly the default galaxies
    # another population: no knots, no dust dimming, Sersic indices spread beyond 4
    other, ocat = simulate_galaxies(60, size=32, seed=7, workers=1, progress=False, variant=Variant(family="sersic"))
    spheroids = ocat[ocat["true_class"] == 0]
    assert (ocat["n_knots"] == 0).all() and spheroids["sersic_n"].between(2.5, 6).all()
    assert spheroids["sersic_n"].std() > 0.3
    # a linear stretch leaves faint light darker than the asinh one; a smaller pixel scale draws galaxies larger
    lin, _ = simulate_galaxies(30, size=32, seed=7, workers=1, progress=False,
                               variant=Variant(stretch="linear", stretch_max=300.0))
    assert np.median(lin) < np.median(images[:30]) + 1 and lin.mean() < images[:30].mean()
    fine, _ = simulate_galaxies(30, size=32, seed=7, workers=1, progress=False, variant=Variant(pixel_scale=0.2))
    def spread(x: np.ndarray) -> float:  # light-weighted mean squared radius, px^2
        yy, xx = np.mgrid[:32, :32] - 15.5
        w = np.clip(x[:, 0].astype(float) - np.median(x, axis=(1, 2, 3))[:, None, None], 0, None)
        return float(((w * (xx**2 + yy**2)).sum((1, 2)) / w.sum((1, 2))).mean())

    assert spread(fine) > spread(images[:30])
    assert DEFAULT_VARIANT == Variant()
    with pytest.raises(ValueError, match="family"):
        Variant(family="spiral")
    with pytest.raises(ValueError, match="positive"):
        Variant(psf_fwhm=(2.0, 1.0))
