"""Component descriptions: morphology measured on stamps with known answers, automatic flags, sentences, the
describe command, and deblending towards a companion-free twin."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from astrovader.analysis.describe import DescribeSettings, describe_components
from astrovader.analysis.morphology import companion_mask, measure, strictly_companion_free
from astrovader.cli import main
from astrovader.inference import Predictions

SIZE = 32


def galaxy(rng: np.random.Generator, sigma: float = 3.0, q: float = 1.0, angle: float = 0.0,
           companion: tuple[float, float] | None = None, knots: bool = False) -> np.ndarray:
    """A noisy uint8 Gaussian galaxy at the centre; optionally elongated, with a companion at (row, col) or
    with small knots inside its light."""
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    c, s = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
    u, v = c * xx + s * yy, -s * xx + c * yy
    im = 0.8 * np.exp(-(u**2 + (v / q) ** 2) / (2 * sigma**2))
    if companion is not None:
        r, col = companion
        im += 0.6 * np.exp(-((yy + (SIZE - 1) / 2 - r) ** 2 + (xx + (SIZE - 1) / 2 - col) ** 2) / (2 * 1.6**2))
    if knots:
        for dy, dx in ((2, 3), (-3, 1), (1, -3)):
            im += 0.12 * np.exp(-((yy - dy) ** 2 + (xx - dx) ** 2) / (2 * 0.6**2))
    im += 0.05 + rng.normal(0, 0.01, im.shape)
    return np.clip(im * 255, 0, 255).astype(np.uint8)[None]


def test_morphology_measures_size_shape_and_companions():
    rng = np.random.default_rng(0)
    imgs = np.stack([galaxy(rng, 3.0), galaxy(rng, 3.0, q=0.4, angle=30), galaxy(rng, 3.0, companion=(6, 25)),
                     galaxy(rng, 4.0, knots=True)])
    m = measure(imgs)
    # a Gaussian of sigma s holds half its light within 1.177 s (measured on a slightly noisy stamp)
    assert m.loc[0, "r50"] == pytest.approx(1.177 * 3.0, rel=0.15)
    assert m.loc[0, "r90"] > m.loc[0, "r50"] * 1.5
    assert m.loc[0, "axis_ratio"] > 0.85 and m.loc[1, "axis_ratio"] == pytest.approx(0.4, abs=0.1)
    assert list(m["has_companion"]) == [False, False, True, False]  # knots inside a disc are not companions
    # offsets from the centre (15.5, 15.5), x right and y up: the companion at row 6, column 25 is up and right
    assert m.loc[2, "companion_x"] == pytest.approx(9.5, abs=1) and m.loc[2, "companion_y"] == pytest.approx(9.5, abs=1)
    # the elongated galaxy is turned 30 degrees from +x towards +row, i.e. clockwise as shown: 150 anticlockwise
    assert m.loc[1, "position_angle"] == pytest.approx(150, abs=4)
    assert m[["concentration", "gini", "m20", "asymmetry"]].notna().all().all()
    assert (m["statmorph_flag"] <= 1).all()
    # the strict test used to pick companion-free galaxies agrees here; the mask covers the companion only
    assert list(strictly_companion_free(imgs[:3])) == [True, True, False]
    mask = companion_mask(imgs[2])
    assert mask[6, 25] and not mask[SIZE // 2, SIZE // 2] and mask.sum() < 0.2 * SIZE**2


def _predictions(labels: np.ndarray, confident: np.ndarray) -> Predictions:
    n, K = len(labels), int(labels.max()) + 1
    probs = np.full((n, K), 0.05)
    probs[np.arange(n), labels] = np.where(confident, 0.95, 0.6)
    probs /= probs.sum(1, keepdims=True)
    mu = np.zeros((n, 4), np.float32)
    mu[:, 0] = labels
    return Predictions(rows=np.arange(n), mu=mu, logvar=np.zeros_like(mu), probs=probs.astype(np.float32),
                       recon_mse=np.zeros(n, np.float32))


@pytest.fixture
def companion_dataset(tmp_path):
    """Component 0: compact round galaxies; 1: large galaxies; 2: large galaxies whose most probable members all
    have a companion (and a few without, as in the demo, where the companion component also holds face-on
    discs)."""
    from astrovader.data.dataset import write_dataset

    rng = np.random.default_rng(1)
    imgs, labels, confident, names = [], [], [], []
    for i in range(90):
        comp = i % 3
        with_companion = comp == 2 and i % 9 != 2
        imgs.append(galaxy(rng, 2.0 if comp == 0 else 4.0, q=1.0 if comp == 0 else 0.7, angle=rng.uniform(0, 180),
                           companion=(5, 26) if with_companion else None))
        labels.append(comp)
        confident.append(with_companion or comp != 2)
        names.append("smooth" if comp == 0 else "disc")
    cat = pd.DataFrame({"id": np.arange(90), "label": names})
    ds = write_dataset(tmp_path / "ds", np.stack(imgs), cat)
    return ds, _predictions(np.array(labels), np.array(confident))


def test_describe_flags_the_companion_component_and_says_so(companion_dataset):
    ds, pred = companion_dataset
    desc = describe_components(pred, ds, settings=DescribeSettings(n_core=10, max_members=30, n_detailed=4),
                               pixel_scale=0.396)
    t = desc.table.set_index("component")
    assert desc.companion_components == [2] and desc.non_morphological == [2]
    assert t.loc[2, "companion_fraction_core"] == 1.0 and t.loc[0, "companion_fraction"] == 0.0
    assert t.loc[0, "r50"] < t.loc[1, "r50"] and t.loc[0, "r50_arcsec"] == pytest.approx(t.loc[0, "r50"] * 0.396)
    assert t.loc[0, "label_majority"] == "smooth" and t.loc[0, "label_fraction"] == 1.0
    sentences = desc.sentences()
    assert "compact" in sentences[0] and "100% smooth" in sentences[0]
    assert "companion" in sentences[2] and "not morphological" in sentences[2]
    assert "companion" not in sentences[1]
    assert len(desc.measurements) == 90 and set(desc.measurements["component"]) == {0, 1, 2}


def test_describe_command_writes_table_with_provenance(tmp_path_factory, tmp_path, capsys):
    from .test_analysis import tiny_run

    run, ds = tiny_run(tmp_path_factory)
    out = tmp_path / "components.parquet"
    args = ["describe", str(run), str(ds), str(out), "--core", "10", "--members", "20", "--detailed", "2",
            "--split", "test", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("component ") >= 3 and "wrote" in printed
    table = pq.read_table(out)
    meta = table.schema.metadata
    assert meta[b"NCOMP"] == b"3" and meta[b"SPLIT"] == b"test" and meta[b"COMMAND"].startswith(b"astrovader describe")
    assert table.num_rows == 3 and "sentence" in table.column_names
    assert pq.read_table(tmp_path / "components_galaxies.parquet").num_rows > 0
    # nothing is overwritten without --overwrite; a wrong suffix is a one-line error
    assert main(args) == 2
    assert main([*args, "--overwrite"]) == 0
    assert main(["describe", str(run), str(ds), str(tmp_path / "x.txt"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and ".csv or .parquet" in err


def test_deblending_moves_towards_a_companion_free_twin(companion_dataset):
    from astrovader import Config
    from astrovader.latent_paths import deblend
    from astrovader.model import AstroVaDErNet

    ds, pred = companion_dataset
    net = AstroVaDErNet(Config.resolve("demo", overrides=["model.latent_dim=4"]))
    # galaxy 2 (component 2, with a companion); its twin must be a galaxy of the same size without one
    res = deblend(net, pred, ds, [2], galaxies=[2], steps=4, companion_mask=companion_mask,
                  companion_free=strictly_companion_free)[0]
    twin = res["partner"]
    assert twin != 2 and pred.labels[twin] in (1, 2) and strictly_companion_free(ds.take([twin]))[0]
    assert res["strip"].shape == (5, 1, SIZE, SIZE) and res["component"] == 2
    with pytest.raises(ValueError, match="no component is grouped by companions"):
        deblend(net, pred, ds, [])
    # twins come only from the rows asked for, and never with a companion: where every candidate has one, the
    # galaxy gets no twin (it used to get the nearest, companion and all)
    rows = np.flatnonzero(np.arange(len(pred.rows)) != twin)
    again = deblend(net, pred, ds, [2], galaxies=[2], steps=4, companion_mask=companion_mask,
                    companion_free=strictly_companion_free, rows=rows)
    assert all(r["partner"] != twin and strictly_companion_free(ds.take([r["partner"]]))[0] for r in again)
    assert deblend(net, pred, ds, [2], galaxies=[2], steps=4, companion_mask=companion_mask,
                   companion_free=lambda imgs: np.zeros(len(imgs), bool)) == []


def test_estimator_follows_scikit_learn(tmp_path_factory):
    from sklearn.base import clone

    from astrovader import AstroVaDEr, Config
    from astrovader.data.dataset import Dataset

    from .test_analysis import tiny_run

    run, ds = tiny_run(tmp_path_factory)
    model = AstroVaDEr.load(run)
    assert "n_components=3" in repr(model) and "fitted" in repr(model)
    K, J = model.n_components, model.config.model.latent_dim
    assert model.weights_.shape == (K,) and model.weights_.sum() == pytest.approx(1.0)
    assert model.means_.shape == (K, J) and model.covariances_.shape == (K, J) and (model.covariances_ > 0).all()
    # the prior is what predict_proba uses: its arg-max is predict
    x = Dataset(ds).load()
    np.testing.assert_array_equal(model.predict(x[:20]), model.predict_proba(x[:20]).argmax(1))
    # fluxes with the ingest's stretch: an affine change of the flux scale gives the same stretched image
    flux = x[:8, 0].astype(np.float64) * 3.7 + 100.0
    np.testing.assert_allclose(model.predict_proba(flux, flux=True), model.predict_proba(flux * 2 + 5, flux=True),
                               atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        model.predict(np.zeros((2, 5, 5)), flux=True)
    # get_params / set_params / clone, as sklearn expects; set_params leaves an unfitted estimator
    fresh = AstroVaDEr("demo")
    assert fresh.get_params() == {"config": "demo", "device": None} and "not fitted" in repr(fresh)
    fresh.set_params(model__n_components=5, train__static_epochs=3)
    assert fresh.n_components == 5 and fresh.config.train.static_epochs == 3
    assert clone(fresh).n_components == 5
    with pytest.raises(ValueError, match="unknown parameter"):
        fresh.set_params(nosuch=1)
    with pytest.raises(AttributeError, match="not fitted"):
        _ = fresh.weights_
    assert isinstance(Config.preset("demo"), Config)


def test_measurements_on_linear_flux_match_the_simulators_truth(tmp_path):
    """Sizes, profiles, shapes, angles and companion offsets against the simulator's catalogue (demo galaxies):
    the stretch recorded in dataset.json is inverted and the recorded PSF is given to the Sersic fit."""
    from astrovader.analysis.morphology import psf_image
    from astrovader.data.simulate import simulate
    from astrovader.data.stretch import PixelStretch

    ds = simulate(tmp_path / "sim", n=240, size=32, seed=3, companion_fraction=0.2, progress=False)
    cat = ds.catalog
    detailed = np.zeros(len(cat), bool)
    for name in cat["class_name"].unique():
        detailed[np.flatnonzero(cat["class_name"].to_numpy() == name)[:20]] = True
    m = pd.concat([cat, measure(ds.load(), detailed=detailed, stretch=PixelStretch.from_meta(ds.meta),
                                psf=psf_image(ds.meta)).add_prefix("m_")], axis=1)
    by = {name: g for name, g in m.groupby("class_name")}
    assert by["elliptical"]["m_sersic_n"].median() > 2
    assert by["face_on_disc"]["m_sersic_n"].median() < 2 and by["edge_on_disc"]["m_sersic_n"].median() < 2
    assert by["edge_on_disc"]["m_axis_ratio"].median() < 0.4 < by["elliptical"]["m_axis_ratio"].median()
    assert by["elliptical"]["m_r50"].median() < by["face_on_disc"]["m_r50"].median()
    elongated = m[m["axis_ratio"] < 0.6]
    diff = np.abs((elongated["m_position_angle"] - elongated["position_angle"] + 90) % 180 - 90)
    assert len(elongated) > 50 and diff.median() < 15  # anticlockwise as shown, as the catalogue's
    pairs = m[m["has_companion"] & m["m_has_companion"]]
    assert len(pairs) > 20  # offsets from the centre with y up, as the catalogue's
    assert (pairs["m_companion_x"] - pairs["companion_x"]).abs().median() < 1
    assert (pairs["m_companion_y"] - pairs["companion_y"]).abs().median() < 1
