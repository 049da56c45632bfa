"""The pretrained models shipped in the package: found by name wherever a run directory is taken, offline."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from astrovader import pretrained
from astrovader.cli import main
from astrovader.data.dataset import write_dataset
from astrovader.estimator import AstroVaDEr
from astrovader.runs import WEIGHTS, Run, weights_sha256

NAMES = ("sdss64-k12-gz1", "sdss64-k3-gz1")


def _recipe_dataset(path, n=12, crop="3xR90+derotate+flux20"):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-32:32, -32:32]
    imgs = np.stack([np.clip(200 * np.exp(-(xx**2 + (yy * (1 + i % 3)) ** 2) / 60.0)
                             + rng.normal(0, 3, (64, 64)), 0, 255) for i in range(n)]).astype(np.uint8)[:, None]
    ds = write_dataset(path, imgs, pd.DataFrame({"id": np.arange(n)}))
    meta = json.loads((path / "dataset.json").read_text())
    meta["preprocessing"] = {"crop": crop, "size": 64, "colour": False}
    (path / "dataset.json").write_text(json.dumps(meta))
    return ds


def test_shipped_models_have_cards_with_held_out_scores():
    assert set(NAMES) <= set(pretrained.names())
    for name in NAMES:
        card = pretrained.card(name)
        assert card["name"] == name and card["stamps"]["size"] == 64 and not card["stamps"]["colour"]
        assert card["held_out"]["n"] > 1000 and card["trained_on"]["n_fit"] > 3000
        scores = card["held_out"]["scores"]
        assert {"astrovader", "kmeans", "pca_gmm"} <= set(scores)
        assert 0 < scores["astrovader"]["nmi"] < 1 and 0.3 < scores["astrovader"]["purity"] <= 1
        assert card["weights_sha256"] == weights_sha256(name)  # the card describes exactly these weights
        run = Run.open(name)
        cfg, state = run.config, run.state
        assert state.finished and cfg.model.n_components == len(card["components"])
        size = sum(f.stat().st_size for f in pretrained.resolve(name).iterdir())
        assert size < 5e6  # small enough to ship inside the package


def test_predict_by_name_offline_with_names_and_provenance(tmp_path, capsys):
    _recipe_dataset(tmp_path / "ds")
    out = tmp_path / "p.parquet"
    assert main(["predict", "sdss64-k3-gz1", str(tmp_path / "ds"), str(out), "--quiet"]) == 0
    table = pd.read_parquet(out)
    assert len(table) == 12 and table["component"].between(0, 2).all()
    names = json.loads((pretrained.resolve("sdss64-k3-gz1") / "component_names.json").read_text())["components"]
    expected = table["component"].map(lambda c: names[str(c)]["name"])
    assert (table["component_name"] == expected).all()
    import pyarrow.parquet as pq

    meta = pq.read_schema(out).metadata
    assert meta[b"RUNDIR"] == b"pretrained:sdss64-k3-gz1"
    # the estimator gives the same components
    model = AstroVaDEr.load("sdss64-k3-gz1", device="cpu")
    from astrovader.data.dataset import Dataset

    np.testing.assert_array_equal(model.predict(Dataset(tmp_path / "ds").load()), table["component"].to_numpy())


def test_stamps_made_another_way_are_refused(tmp_path, capsys):
    _recipe_dataset(tmp_path / "ds", crop="0.4")
    code = main(["predict", "sdss64-k12-gz1", str(tmp_path / "ds"), str(tmp_path / "p.parquet")])
    err = capsys.readouterr().err
    assert code == 2 and "crop '0.4' (needs '3xR90+derotate+flux20')" in err
    assert "astrovader ingest SOURCE OUT --preset sdss64-k12" in err and "Traceback" not in err
    assert not (tmp_path / "p.parquet").exists()


def test_an_existing_directory_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sdss64-k3-gz1").mkdir()
    assert str(pretrained.resolve("sdss64-k3-gz1")) == "sdss64-k3-gz1"
    assert not pretrained.is_pretrained("sdss64-k3-gz1")
    with pytest.raises(ValueError, match=f"no {WEIGHTS}"):
        Run.open("sdss64-k3-gz1")


def test_presets_lists_the_pretrained_models(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "pretrained models" in out
    for name in NAMES:
        assert name in out


def test_provenance_names_the_shipped_model():
    meta = Run.open("sdss64-k12-gz1").provenance()
    assert meta["RUNDIR"] == "pretrained:sdss64-k12-gz1" and meta["NCOMP"] == "12"


def test_package_data_ships_every_model_file():
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        pytest.skip("not a source checkout")
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["astrovader"]
    package = root / "src" / "astrovader"
    files = [f for name in NAMES for f in (package / "pretrained" / name).iterdir() if f.is_file()]
    assert len(files) >= 8
    for f in files:  # an installed (non-editable) package carries them too
        assert any(fnmatch.fnmatch(str(f.relative_to(package)), g) for g in globs), f
