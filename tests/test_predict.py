"""Prediction catalogues, the estimator API and the core CLI commands, on a tiny trained run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from astropy.table import Table

from astrovader import AstroVaDEr, Config
from astrovader.cli import main
from astrovader.data.dataset import write_dataset

from .conftest import blob_images

TINY = ["model.image_size=16", "model.encoder_filters=[4,4]", "model.encoder_kernels=[3,3]",
        "model.decoder_filters=[4,4]", "model.decoder_kernels=[3,3]", "model.latent_dim=4",
        "model.n_components=3", "train.batch_size=32", "train.gamma_epochs=2", "train.gmm_init_batches=4",
        "train.anneal_epochs=1", "train.static_epochs=1", "train.periods=1", "train.device=cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pred")
    imgs, labels = blob_images(300, size=16, seed=1)
    ds = write_dataset(tmp / "ds", imgs, pd.DataFrame({"id": np.arange(1000, 1300), "true_class": labels}))
    cfg = Config.resolve("demo", overrides=TINY)
    model = AstroVaDEr(cfg).fit(ds, run_dir=tmp / "run", progress=False)
    return tmp, ds, model


def test_predict_catalogue_columns_and_values(trained, tmp_path):
    tmp, ds, model = trained
    assert main(["predict", str(tmp / "run"), str(ds.path), str(tmp_path / "p.parquet"), "--quiet",
                 "--batch-size", "64"]) == 0
    cat = pd.read_parquet(tmp_path / "p.parquet")
    J, K = 4, 3
    expected = (["id"] + [f"z_{j}" for j in range(J)] + [f"logvar_{j}" for j in range(J)]
                + [f"p_{k}" for k in range(K)] + ["component", "max_prob", "recon_mse"])
    assert list(cat.columns) == expected
    assert cat["id"].tolist() == list(range(1000, 1300))
    probs = cat[[f"p_{k}" for k in range(K)]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert (cat["component"].to_numpy() == probs.argmax(1)).all()
    np.testing.assert_allclose(cat["max_prob"], probs.max(1))
    # the catalogue agrees with the Python API
    np.testing.assert_allclose(probs, model.predict_proba(ds.load()), atol=1e-5)
    np.testing.assert_allclose(cat[[f"z_{j}" for j in range(J)]].to_numpy(), model.transform(ds), atol=1e-5)
    recon = model.reconstruct(ds.load())
    mse = ((recon - ds.load() / 255.0) ** 2).reshape(len(recon), -1).mean(1)
    np.testing.assert_allclose(cat["recon_mse"], mse, rtol=1e-4, atol=1e-6)


def test_predict_fits(trained, tmp_path):
    tmp, ds, _ = trained
    assert main(["predict", str(tmp / "run"), str(ds.path), str(tmp_path / "p.fits"), "--quiet"]) == 0
    t = Table.read(tmp_path / "p.fits")
    assert len(t) == 300 and "p_2" in t.colnames and t["id"][0] == 1000


def test_estimator_api_roundtrip(trained, tmp_path):
    _, ds, model = trained
    x = ds.load()[:10]
    model.save(tmp_path / "saved")
    again = AstroVaDEr.load(tmp_path / "saved")
    np.testing.assert_allclose(again.predict_proba(x), model.predict_proba(x), atol=1e-6)
    assert model.predict(x).shape == (10,)
    # float images in [0, 1] and (N, H, W) arrays are accepted
    np.testing.assert_allclose(model.transform(x[:, 0] / 255.0), model.transform(x), atol=1e-5)
    imgs, comps = model.sample(7, cluster=[0, 2], seed=3)
    assert imgs.shape == (7, 1, 16, 16) and list(comps) == [0, 2, 0, 2, 0, 2, 0]
    assert imgs.min() >= 0 and imgs.max() <= 1
    imgs2, _ = model.sample(7, cluster=[0, 2], seed=3)
    np.testing.assert_array_equal(imgs, imgs2)
    with pytest.raises(ValueError, match="expects"):
        model.predict(np.zeros((2, 1, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="component must be in 0..2"):
        model.sample(2, cluster=5)
    with torch.no_grad():
        w = model.net.gmm.weights
    assert abs(float(w.sum()) - 1) < 1e-6


def test_cli_errors_are_clear(trained, tmp_path, capsys):
    tmp, ds, _ = trained
    assert main(["train", str(ds.path), str(tmp_path / "r"), "--preset", "demo", "--set", "model.latent_dim=0"]) == 2
    assert "model.latent_dim" in capsys.readouterr().err
    # an explicit 32 px config on a 16 px dataset names both sizes
    assert main(["train", str(ds.path), str(tmp_path / "r"), "--preset", "demo", "--quiet",
                 "--set", "model.image_size=32"]) == 2
    assert "model.image_size=32" in capsys.readouterr().err
    # without one, the preset's architecture is built for the dataset's image size
    assert main(["train", str(ds.path), str(tmp_path / "r2"), "--preset", "demo", "--quiet", "--stop-after", "0"]) == 0
    assert "using model.image_size = 16 from the dataset" in capsys.readouterr().out
    assert main(["predict", str(tmp_path / "nothing"), str(ds.path), str(tmp_path / "p.parquet")]) == 2
    assert "model.safetensors" in capsys.readouterr().err
    assert main(["summary", "--preset", "paper"]) == 0
    assert "870,889" in capsys.readouterr().out


def test_predict_proba_on_a_dataset_streams_and_matches_the_array_path(trained, monkeypatch):
    _, ds, model = trained
    from astrovader.data import dataset as dataset_module
    from astrovader.inference import READ_ROWS

    whole = model.predict_proba(ds.load())

    def refuse(self):
        raise AssertionError("the whole dataset was loaded into memory")

    monkeypatch.setattr(dataset_module.Dataset, "load", refuse)
    monkeypatch.setattr("astrovader.inference.READ_ROWS", 64)  # several read blocks even for this small set
    assert READ_ROWS >= 1024
    np.testing.assert_array_equal(model.predict_proba(ds.path), whole)
    np.testing.assert_array_equal(model.predict_proba(str(ds.path), batch_size=50), whole)


@pytest.mark.parametrize("command", [["predict", "{run}", "{ds}", "{tmp}/p.parquet"],
                                     ["generate", "{run}", "{tmp}/g.fits", "--n", "4", "--quiet"],
                                     ["describe", "{run}", "{ds}", "{tmp}/d.csv", "--max-images", "60"]])
def test_a_command_opens_the_run_once_and_never_re_derives_its_path(trained, tmp_path, monkeypatch, command):
    import astrovader.pretrained
    from astrovader.runs import Run

    tmp, ds, _ = trained
    opened, resolved = [], []
    real_open, real_resolve = Run.open.__func__, astrovader.pretrained.resolve
    monkeypatch.setattr(Run, "open", classmethod(lambda cls, *a, **k: opened.append(a[0]) or real_open(cls, *a, **k)))
    monkeypatch.setattr(astrovader.pretrained, "resolve", lambda r: resolved.append(r) or real_resolve(r))
    monkeypatch.setattr("astrovader.runs.resolve", astrovader.pretrained.resolve)
    args = [a.format(run=tmp / "run", ds=ds.path, tmp=tmp_path) for a in command]
    assert main([*args, "--quiet"] if "--quiet" not in args else args) == 0
    assert opened[0] == str(tmp / "run") and all(isinstance(r, Run) for r in opened[1:])
    assert resolved == [str(tmp / "run")]  # the name became a path once, when the run was opened


def test_run_open_names_the_run_and_refuses_an_unfinished_one(trained):
    from astrovader.runs import Run, RunError

    tmp, _, _ = trained
    run = Run.open(tmp / "run", "cpu")
    assert run.path == tmp / "run" and run.config.model.n_components == 3 and run.state.finished
    assert Run.open(run) is run
    assert run.provenance("cmd")["RUNDIR"] == str((tmp / "run").resolve()) and len(run.weights_sha256) == 16
    with pytest.raises(RunError, match="no model.safetensors"):
        Run.open(tmp / "nothing-here")
