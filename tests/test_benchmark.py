"""The clustering benchmark harness: schedule scaling, health checks, summaries, baselines and the CLI end to end
on tiny settings (a few hundred images, a handful of epochs)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from astrovader.baselines import BASELINES, METRICS, score, train_autoencoder
from astrovader.benchmark import apply_overrides, format_summary, gz1_config, scale_epochs, summarise
from astrovader.cli import main
from astrovader.config import Config, ConfigError
from astrovader.data.dataset import Dataset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_mnist_config_is_the_documented_architecture():
    cfg = Config.preset("mnist")
    m = cfg.model
    assert (m.image_size, m.latent_dim, m.n_components, len(m.encoder_filters)) == (28, 10, 10, 2)
    assert cfg.loss.reconstruction == "bce" and cfg.train.flips is False
    # the measured fix for MNIST (benchmarks/RESULTS.md): UMAP-graph initialisation, then alignment
    assert cfg.train.gmm_init_embedding == "umap" and cfg.train.align_epochs > 0
    assert cfg.train.gmm_init_batches * cfg.train.batch_size >= 10_000  # every test digit in the init


def test_gz1_config_is_the_measured_default():
    # benchmarks/RESULTS.md: J = 10 at both K; gamma-training as a plain VAE and full covariances only at K = 12
    k3, k12 = gz1_config(3), gz1_config(12)
    assert (k3.model.latent_dim, k3.model.n_components, k3.loss.gamma, k3.model.covariance) == (10, 3, 5e-4, "diag")
    assert (k12.model.latent_dim, k12.model.n_components, k12.loss.gamma, k12.model.covariance) == (10, 12, 1.0, "full")
    assert gz1_config(5).model.covariance == "diag"  # other K: VaDE's diagonal prior


def test_scale_epochs_keeps_every_phase():
    cfg = scale_epochs(Config.preset("mnist"), 0.01)
    t = cfg.train
    assert t.gamma_epochs == 1 and t.align_epochs == 1 and t.anneal_epochs == 1 and t.static_epochs == 1
    assert t.epochs == 1 + 1 + t.periods * 2
    assert scale_epochs(Config.preset("mnist"), 1.0).train.epochs == Config.preset("mnist").train.epochs
    with pytest.raises(ValueError):
        scale_epochs(Config.preset("mnist"), 0)


def test_overrides_apply_and_reject_bad_keys():
    cfg = apply_overrides(Config.preset("mnist"), ["loss.gamma=0.01", "model.latent_dim=12"])
    assert cfg.loss.gamma == 0.01 and cfg.model.latent_dim == 12
    with pytest.raises(ConfigError, match="unknown config key"):
        apply_overrides(Config.preset("mnist"), ["loss.nope=1"])


def test_score_flags_empty_components_and_nan():
    labels = np.array([0, 0, 1, 1])
    good = score(labels, np.array([1, 1, 0, 0]), 2, finite=True)
    assert good["accuracy"] == 1.0 and good["empty_components"] == 0 and good["ok"]
    collapsed = score(labels, np.array([2, 2, 2, 2]), 3, finite=True)
    assert collapsed["members"] == [0, 0, 4] and collapsed["empty_components"] == 2 and not collapsed["ok"]
    assert not score(labels, np.array([0, 0, 1, 1]), 2, finite=False)["ok"]


def test_summarise_mean_std_and_worst():
    runs = [{"methods": {"m": {"accuracy": a, "nmi": 0.5, "ari": 0.4, "purity": a, "nan": False,
                               "empty_components": e, "ok": e == 0}}} for a, e in ((0.8, 0), (0.6, 1))]
    s = summarise(runs)["m"]
    assert s["accuracy"]["mean"] == pytest.approx(0.7) and s["accuracy"]["std"] == pytest.approx(0.1)
    assert s["accuracy"]["min"] == pytest.approx(0.6)
    assert s["runs_with_empty_components"] == 1 and not s["all_ok"] and not s["any_nan"]
    text = format_summary({"seeds": 2, "tasks": {"t": {"n_images": 4, "n_classes": 2, "n_components": 2,
                                                       "epochs": 3, "reference": {"ref": 0.9}, "methods": {"m": s}}}})
    assert "0.7000+-0.1000 (0.600)" in text and "ref: accuracy 0.9000" in text and "supervised" not in text
    cnn = summarise([{"methods": {"cnn": {"accuracy": 0.9, "nmi": 1.0, "ari": 0.8, "purity": 0.9, "ok": True,
                                          "empty_components": 0}}}])["cnn"]
    text = format_summary({"seeds": 2, "tasks": {"t": {"n_images": 4, "n_classes": 2, "n_components": 2,
                                                       "epochs": 3, "methods": {"m": s, "cnn": cnn}}}})
    lines = text.splitlines()
    assert lines.index(next(x for x in lines if "supervised ceiling" in x)) < lines.index(
        next(x for x in lines if "CNN (supervised)" in x))
    assert "share of the best supervised NMI (1.0000): m 0.50" in text


def test_plain_autoencoder_and_vae_train_the_same_network():
    from .conftest import blob_images

    imgs, _ = blob_images(64, size=16)
    cfg = Config.resolve("demo", overrides=["model.image_size=16", "train.batch_size=16", "train.gamma_epochs=1",
                                            "train.periods=1", "train.anneal_epochs=1", "train.static_epochs=0"])
    for variational in (False, True):
        net = train_autoencoder(cfg, imgs, variational=variational)
        assert all(torch.isfinite(p).all() for p in net.parameters())
        # The mixture prior is not trained: it keeps its initial values.
        assert torch.equal(net.gmm.logits.detach(), torch.zeros(cfg.model.n_components))


def test_held_out_baselines_are_fitted_on_one_part_and_scored_on_the_other():
    import astrovader.baselines as bm

    from .conftest import blob_images

    imgs, labels = blob_images(90, size=16)
    test = bm.held_out_split(labels, 0.3)
    assert len(test) == 27 and np.bincount(labels[test]).tolist() == [9, 9, 9]  # stratified
    np.testing.assert_array_equal(test, bm.held_out_split(labels, 0.3))  # seeded: the same for every run
    cfg = Config.resolve("demo", overrides=["model.image_size=16", "model.n_components=3"])
    task = bm.Task("t", imgs, labels, cfg, knn=True, test=test)
    assert len(np.intersect1d(task.fit_index, task.eval_index)) == 0 and len(task.fit_index) == 63
    for method in ("kmeans", "pca_gmm"):
        r = bm.run_baseline(method, task, cfg)
        assert sum(r["members"]) == 27 and r["accuracy"] > 0.9, (method, r)  # blobs are easy, even unseen


def test_neighbour_agreement_counts_neighbours_of_the_same_class():
    from astrovader.baselines import neighbour_agreement

    rng = np.random.default_rng(0)
    apart = np.concatenate([rng.normal(0, 1, (30, 2)), rng.normal(50, 1, (30, 2))])
    labels = np.repeat([0, 1], 30)
    assert neighbour_agreement(apart, labels, k=10) == 1.0
    assert neighbour_agreement(apart, rng.permutation(labels), k=10) == pytest.approx(0.5, abs=0.15)


def test_brightness_baseline_splits_on_brightness_and_not_on_shape():
    """Two shapes at two brightnesses each: the brightness-only GMM finds the brightness, not the shape."""
    import astrovader.baselines as bm

    yy, xx = np.mgrid[:24, :24] - 11.5
    round_, bar = np.exp(-(xx**2 + yy**2) / 18), np.exp(-(xx**2 / 60 + yy**2 / 3))
    rng = np.random.default_rng(0)
    imgs, shape, bright = [], [], []
    for i in range(80):
        s, b = i % 2, (i // 2) % 2
        im = (round_ if s else bar) * (220 if b else 40) + 10 + rng.normal(0, 1, (24, 24))
        imgs.append(np.clip(im, 0, 255).astype(np.uint8)[None])
        shape.append(s)
        bright.append(b)
    imgs = np.stack(imgs)
    feats = bm.brightness_features(imgs)
    assert feats.shape == (80, 2)
    b = np.array(bright, bool)
    assert feats[b, 0].min() > feats[~b, 0].max() and feats[b, 1].min() > feats[~b, 1].max()
    cfg = Config.resolve("demo", overrides=["model.image_size=24", "model.n_components=2"])
    for truth, expected in ((np.array(bright), 1.0), (np.array(shape), 0.5)):
        r = bm.run_baseline("brightness_gmm", bm.Task("t", imgs, truth, cfg), cfg)
        assert r["accuracy"] == pytest.approx(expected, abs=0.05), truth


def test_supervised_ceilings_learn_the_classes_on_held_out_images(tmp_path: Path, monkeypatch):
    import astrovader.analysis.morphology as morphology
    import astrovader.baselines as bm
    from astrovader.benchmark import ceilings

    from .conftest import blob_images

    imgs, labels = blob_images(60, size=16)
    cfg = Config.resolve("demo", overrides=["model.image_size=16", "model.n_components=3"])
    task = bm.Task("t", imgs, labels, cfg, test=bm.held_out_split(labels, 0.3))
    for method in ("knn_pixels", "morph_logreg"):
        r = ceilings.run_ceiling(method, task, seed=0, cache=tmp_path)
        assert r["accuracy"] >= 0.9 and r["supervised"], (method, r)
    pred = ceilings.cnn_classifier(imgs[task.fit_index], labels[task.fit_index], imgs[task.eval_index], min_steps=100)
    assert (pred == labels[task.eval_index]).mean() >= 0.9
    # the statmorph measurements are made once per set of images and kept in the cache
    monkeypatch.setattr(morphology, "measure", lambda *a, **k: pytest.fail("measured again"))
    feats = ceilings.morphology_features(imgs, tmp_path)
    assert feats.shape == (60, len(ceilings.MORPHOLOGY_FEATURES)) and len(list(tmp_path.glob("morphology-*.npy"))) == 1
    with pytest.raises(ValueError, match="unknown ceiling"):
        ceilings.run_ceiling("oracle", task, 0)


def test_deep_baselines_train_once_per_seed_and_images(monkeypatch):
    """The K = 12 and K = 3 gz1 tasks share one trained AE (and VAE) per seed instead of training it twice."""
    import astrovader.baselines as bm

    from .conftest import blob_images

    imgs, labels = blob_images(64, size=16)
    calls = []
    real = bm.train_autoencoder

    def counting(cfg, images, variational):
        calls.append(variational)
        return real(cfg, images, variational)

    monkeypatch.setattr(bm, "train_autoencoder", counting)
    base = ["model.image_size=16", "train.batch_size=16", "train.gamma_epochs=1", "train.periods=1",
            "train.anneal_epochs=1", "train.static_epochs=0"]
    cache: dict = {}
    scores = {}
    for k, gamma, cov in ((4, 1.0, "full"), (2, 5e-4, "diag")):  # gz1's tasks differ in K, gamma and covariance
        cfg = Config.resolve("demo", overrides=[*base, f"model.n_components={k}", f"loss.gamma={gamma}",
                                                f"model.covariance='{cov}'"])
        task = bm.Task(f"t{k}", imgs, labels, cfg)
        scores[k] = bm.run_baseline("ae_gmm", task, cfg, cache)
        assert len(scores[k]["members"]) == k and not scores[k]["nan"]
    assert calls == [False]  # trained once, reused for the second K
    cfg.train.seed = 1
    bm.run_baseline("ae_gmm", bm.Task("t2", imgs, labels, cfg), cfg, cache)
    assert calls == [False, False]  # a new seed trains its own network
    cfg = Config.resolve("demo", overrides=[*base, "model.n_components=2", "model.latent_dim=3"])
    bm.run_baseline("ae_gmm", bm.Task("t2", imgs, labels, cfg), cfg, cache)
    assert calls == [False, False, False]  # so does another latent size


def test_cli_rejects_bad_arguments(tmp_path: Path, capsys):
    assert main(["benchmark", "mnist", "--data", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["benchmark", "mnist", "--data", str(tmp_path), "--baselines", "kmeans,magic"]) == 2
    assert "magic" in capsys.readouterr().err
    assert main(["benchmark", "mnist", "--data", str(tmp_path), "--ceilings", "cnn,oracle"]) == 2
    assert "--ceilings: unknown oracle" in capsys.readouterr().err
    assert main(["benchmark", "mnist", "--data", str(tmp_path), "--seeds", "0"]) == 2
    assert main(["benchmark", "gz1", "--data", str(tmp_path), "--crop", "1.5", "--out", str(tmp_path)]) == 2
    assert "--crop" in capsys.readouterr().err
    assert main(["benchmark", "gz1", "--data", str(tmp_path), "--crop", "0.2xR90", "--out", str(tmp_path)]) == 2
    assert "--crop" in capsys.readouterr().err


def _needs(sub: str) -> Path:
    d = SHARED_DATA / sub
    if not d.is_dir():
        pytest.skip(f"{d} is not present")
    return d


def test_mnist_benchmark_end_to_end_and_resumes(tmp_path: Path, capsys):
    data = _needs("mnist")
    out = tmp_path / "bench"
    args = ["benchmark", "mnist", "--data", str(data), "--n", "200", "--seeds", "2", "--epochs-scale", "0.05",
            "--ceilings", "none", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "VaDE (published): accuracy 0.9446" in text and "ae_gmm" in text
    summary = json.loads((out / "summary.json").read_text())
    task = summary["tasks"]["mnist"]
    assert task["n_images"] == 200 and task["n_components"] == 10
    assert set(task["methods"]) == {"astrovader", *BASELINES}
    for row in task["methods"].values():
        assert row["runs"] == 2 and set(METRICS) <= set(row) and not row["any_nan"]
        assert 0 <= row["accuracy"]["min"] <= row["accuracy"]["mean"] <= 1
    seed = json.loads((out / "mnist" / "seed1.json").read_text())
    a = seed["methods"]["astrovader"]
    assert len(a["members"]) == 10 and sum(a["members"]) == 200 and "at_init" in a
    assert isinstance(a["empty_components"], int) and a["ok"] == (a["empty_components"] == 0 and not a["nan"])
    # the kNN accuracy is a GZ1/simulated extra, not an MNIST metric
    assert "knn_accuracy" not in a
    # a second run with the same settings reuses the finished seeds
    assert main([*args, "--baselines", "all", "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["tasks"]["mnist"]["methods"] == task["methods"]


def test_gz1_benchmark_small_subset(tmp_path: Path, capsys, monkeypatch):
    from astrovader.benchmark import ceilings

    data = _needs("gz1-sdss")
    # the CNN ceiling's few hundred steps are the benchmark's default; this test checks the plumbing, not the CNN
    monkeypatch.setattr(ceilings, "cnn_classifier", functools.partial(ceilings.cnn_classifier, epochs=2, min_steps=20))
    out = tmp_path / "gz1"
    assert main(["benchmark", "gz1", "--data", str(data), "--n", "120", "--seeds", "1", "--epochs-scale", "0.05",
                 "--set", "train.batch_size=32", "--baselines", "kmeans,brightness_gmm", "--ceilings",
                 "knn_pixels,cnn", "--out", str(out), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "supervised ceiling" in table and "CNN (supervised)" in table and "kNN pixels (supervised)" in table
    assert "share of the best supervised NMI" in table and "brightness_gmm" in table
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tasks"]) == {"gz1-k12", "gz1-k3"}
    k3, k12 = summary["tasks"]["gz1-k3"]["methods"], summary["tasks"]["gz1-k12"]["methods"]
    assert k3["cnn"] == k12["cnn"]  # a ceiling depends on the images and labels, not on K: fitted once per seed
    for name, k in (("gz1-k12", 12), ("gz1-k3", 3)):
        task = summary["tasks"][name]
        assert task["n_components"] == k and task["n_classes"] == 3 and task["n_images"] == 120
        assert task["evaluated_on"].startswith("held-out 36 of 120")  # fitted on 84, scored on the other 36
        for method in ("astrovader", "kmeans"):
            assert 0 <= task["methods"][method]["knn_accuracy"]["mean"] <= 1
        assert 0 <= task["methods"]["astrovader"]["neighbour_agreement"]["mean"] <= 1
    seed = json.loads((out / "gz1-k3" / "seed0.json").read_text())
    assert len(seed["methods"]["astrovader"]["members"]) == 3
    assert sum(seed["methods"]["astrovader"]["members"]) == sum(seed["methods"]["kmeans"]["members"]) == 36
    assert len(Dataset(out / "cache" / "gz1-64px-crop3xR90+derotate+flux20-n120-fit0.7")) == 84
    assert seed["settings"]["config"]["model"]["image_size"] == 64
    assert seed["torch_threads"] == torch.get_num_threads()  # results depend on it: recorded with them
    # the default framing: 3 x each galaxy's R90, major axis horizontal, flux-normalised; all could be framed
    assert seed["settings"]["preprocessing"] == {"crop": "3xR90+derotate+flux20", "size": 64, "held_out": 0.3}
    cached = Dataset(out / "cache" / "gz1-64px-crop3xR90+derotate+flux20-n120").load().astype(np.float64)
    assert np.allclose(cached.mean(axis=(1, 2, 3)), 20, atol=0.5)


def test_gz2_kaggle_benchmark_small_subset(tmp_path: Path):
    data = _needs("gz2-kaggle")
    out = tmp_path / "gz2"
    assert main(["benchmark", "gz2-kaggle", "--data", str(data), "--n", "60", "--seeds", "1", "--epochs-scale",
                 "0.05", "--set", "train.batch_size=16", "--baselines", "kmeans", "--ceilings", "none", "--out",
                 str(out), "--quiet"]) == 0
    task = json.loads((out / "summary.json").read_text())["tasks"]["gz2-kaggle-k2"]
    assert task["n_images"] == 60 and task["n_classes"] == 2 and task["n_components"] == 2
    assert task["evaluated_on"].startswith("held-out 18 of 60")
    for method in ("astrovader", "kmeans"):
        assert 0 <= task["methods"][method]["linear_probe"]["mean"] <= 1
    assert Dataset(out / "cache" / "gz2-kaggle-64px-n60").image_size == 64


def test_simulated_benchmark_both_companion_fractions(tmp_path: Path):
    pytest.importorskip("galsim")
    out = tmp_path / "sim"
    assert main(["benchmark", "simulated", "--n", "96", "--seeds", "1", "--epochs-scale", "0.05",
                 "--set", "train.batch_size=32", "--baselines", "pca_gmm", "--ceilings", "none", "--out", str(out),
                 "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tasks"]) == {"simulated-cf0", "simulated-cf0.2"}
    for task in summary["tasks"].values():
        assert task["n_classes"] == 3 and task["n_images"] == 96
        assert set(task["methods"]) == {"astrovader", "pca_gmm"}


def test_sim_suite_tunes_on_some_surveys_and_reports_only_the_named_tasks(tmp_path: Path, capsys):
    pytest.importorskip("galsim")
    from astrovader.benchmark import SIM_SUITE, sim_suite_config

    roles = {sv.role for sv in SIM_SUITE}
    assert roles == {"tune", "held-out"} and sum(sv.role == "held-out" for sv in SIM_SUITE) >= 3
    assert sim_suite_config(64).model.image_size == 64 and sim_suite_config(32).model.n_components == 3
    out = tmp_path / "suite"
    assert main(["benchmark", "sim-suite", "--tasks", "sim-nonsense", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no task sim-nonsense" in err and "sim-sersic-cf30" in err
    chosen = [sv for sv in SIM_SUITE if sv.name in ("demo-cf0", "sersic-64px-noisy")]
    assert {sv.role for sv in chosen} == {"tune", "held-out"}
    assert main(["benchmark", "sim-suite", "--tasks", ",".join(f"sim-{sv.name}" for sv in chosen), "--n", "60",
                 "--seeds", "1", "--epochs-scale", "0.03", "--set", "train.batch_size=32", "--baselines", "pca_gmm",
                 "--ceilings", "none",
                 "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tasks"]) == {f"sim-{sv.name}" for sv in chosen}
    for sv in chosen:
        task = summary["tasks"][f"sim-{sv.name}"]
        assert task["n_classes"] == 3 and task["evaluated_on"].startswith("held-out 18 of 60")
        record = json.loads((out / f"sim-{sv.name}" / "seed0.json").read_text())
        assert record["settings"]["preprocessing"]["role"] == sv.role
        assert record["settings"]["config"]["model"]["image_size"] == sv.size
    simulated = sorted(p.name for p in (out / "cache").iterdir() if p.is_dir() and not p.name.endswith("0.7"))
    assert simulated == sorted(f"sim-{sv.name}-n60" for sv in chosen)  # the other surveys were not simulated
