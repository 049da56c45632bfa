"""The s3VDC schedule, mini-batch GMM initialisation, checkpoints, resume and divergence handling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from astrovader.config import Config
from astrovader.gmm_init import fit_gmm_init, reseed_empty_components
from astrovader.runs import CHECKPOINT, read_history
from astrovader.schedule import learning_rate, schedule
from astrovader.train import TrainingDiverged, train


def tiny_config(**over) -> Config:
    sets = ["model.image_size=16", "model.encoder_filters=[4,4]", "model.encoder_kernels=[3,3]",
            "model.decoder_filters=[4,4]", "model.decoder_kernels=[3,3]", "model.latent_dim=4",
            "model.n_components=3", "train.batch_size=32", "train.gamma_epochs=2", "train.gmm_init_batches=4",
            "train.anneal_epochs=2", "train.static_epochs=1", "train.periods=2", "train.lr=1e-3",
            "train.lr_min=1e-4", "train.lr_decay_every=2", "train.device=cpu", "train.validation_fraction=0.1"]
    sets += [f"{k}={v}" for k, v in over.items()]
    return Config.resolve("demo", overrides=sets)


def test_paper_schedule_beta_and_learning_rate():
    cfg = Config.preset("paper")
    plans = schedule(cfg)
    assert len(plans) == 350
    assert [p.phase for p in plans[:100]] == ["gamma"] * 100
    assert all(p.kl_gmm_weight == 0 and p.kl_unit_weight == 5e-4 for p in plans[:100])
    for period in range(5):
        s = 100 + 50 * period
        anneal, static = plans[s:s + 25], plans[s + 25:s + 50]
        assert [p.phase for p in anneal] == ["anneal"] * 25 and [p.phase for p in static] == ["static"] * 25
        np.testing.assert_allclose([p.beta for p in anneal], (np.arange(25) / 25) ** 3)
        np.testing.assert_allclose([p.kl_gmm_weight for p in anneal], ((np.arange(25) / 25) ** 3 + 5e-4) * 0.3)
        assert all(p.beta == 1 and p.kl_gmm_weight == pytest.approx(0.3 * (1 + 5e-4)) for p in static)
    lrs = np.array([p.lr for p in plans])
    assert lrs[0] == pytest.approx(3e-4) and lrs[-1] == pytest.approx(1e-6)
    assert np.all(np.diff(lrs) <= 0)
    # step-wise: constant within each block of 5 epochs, exponential between blocks
    assert np.all(lrs[:5] == lrs[0]) and lrs[5] < lrs[4]
    ratios = lrs[5::5] / lrs[:-5:5]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)


@pytest.mark.parametrize("epochs_cfg", [(1, 0, 0, 0), (3, 2, 1, 1), (10, 4, 4, 3)])
def test_learning_rate_reaches_minimum_at_last_epoch(epochs_cfg):
    g, a, s, p = epochs_cfg
    cfg = Config.resolve(overrides=[f"train.gamma_epochs={g}", f"train.anneal_epochs={a}",
                                    f"train.static_epochs={s}", f"train.periods={p}", "train.lr_decay_every=5"])
    t = cfg.train
    assert learning_rate(t, t.epochs - 1) == pytest.approx(t.lr_min)
    if t.epochs > 1:
        assert learning_rate(t, 0) == pytest.approx(t.lr)


def test_minibatch_gmm_init_recovers_planted_mixture():
    rng = np.random.default_rng(0)
    K, J = 4, 6
    means = rng.normal(0, 6, size=(K, J))
    sds = rng.uniform(0.5, 1.5, size=(K, J))
    weights = np.array([0.1, 0.2, 0.3, 0.4])
    comp = rng.choice(K, size=4000, p=weights)
    z = means[comp] + rng.normal(size=(4000, J)) * sds[comp]
    fit = fit_gmm_init(z, K, seed=0, n_init=10)
    order = [int(np.argmin(((fit["means"] - m) ** 2).sum(1))) for m in means]
    assert sorted(order) == list(range(K))
    np.testing.assert_allclose(fit["means"][order], means, atol=0.15)
    np.testing.assert_allclose(np.sqrt(fit["variances"][order]), sds, rtol=0.1)
    np.testing.assert_allclose(fit["weights"][order], weights, atol=0.02)


def test_training_runs_and_initialises_gmm(blob_dataset, tmp_path):
    cfg = tiny_config()
    res = train(cfg, blob_dataset, tmp_path / "run", progress=False)
    hist = read_history(tmp_path / "run")
    assert [h["epoch"] for h in hist] == list(range(cfg.train.epochs))
    assert [h["phase"] for h in hist] == ["gamma", "gamma", "anneal", "anneal", "static", "anneal", "anneal", "static"]
    assert all(np.isfinite(h["train_total"]) and np.isfinite(h["val_total"]) for h in hist)
    assert hist[0]["train_kl_gmm"] == 0 and hist[2]["train_kl_gmm"] > 0
    assert hist[-1]["lr"] == pytest.approx(cfg.train.lr_min)
    w = res.net.gmm.weights.detach()
    assert torch.isclose(w.sum(), torch.tensor(1.0)) and (res.net.gmm.variances > 0).all()
    for f in ("config.toml", "model.safetensors", "history.csv", CHECKPOINT):
        assert (tmp_path / "run" / f).is_file()
    # weights are plain safetensors
    assert "gmm.means" in load_file(str(tmp_path / "run" / "model.safetensors"))


def test_fixed_mixture_weights_stay_uniform(blob_dataset, tmp_path):
    """learn_weights = false with the s3VDC initialisation: pi stays 1/K through every phase and re-seeding,
    while the means and variances still train."""
    cfg = tiny_config(**{"train.gmm_init": "'s3vdc'", "train.learn_weights": "false"})
    res = train(cfg, blob_dataset, tmp_path / "fixed", progress=False)
    K = cfg.model.n_components
    assert torch.allclose(res.net.gmm.weights, torch.full((K,), 1 / K))
    assert not res.net.gmm.logits.requires_grad
    learned = train(tiny_config(**{"train.gmm_init": "'s3vdc'"}), blob_dataset, tmp_path / "learned", progress=False)
    assert (learned.net.gmm.weights - 1 / K).abs().max() > 1e-4  # learned weights do move


def test_resume_equals_uninterrupted(blob_dataset, tmp_path):
    cfg = tiny_config()
    full = train(cfg, blob_dataset, tmp_path / "full", progress=False)
    for stop in (1, 3):  # a stop inside gamma-training (right at GMM init) and inside annealing
        run = tmp_path / f"stopped{stop}"
        train(cfg, blob_dataset, run, progress=False, stop_after_epoch=stop)
        assert len(read_history(run)) == stop + 1
        resumed = train(cfg, blob_dataset, run, resume=True, progress=False)
        for k, v in full.net.state_dict().items():
            torch.testing.assert_close(resumed.net.state_dict()[k], v, rtol=0, atol=0, msg=k)
        assert [h["epoch"] for h in read_history(run)] == list(range(cfg.train.epochs))


def test_refuses_to_overwrite_a_run(blob_dataset, tmp_path):
    cfg = tiny_config(**{"train.periods": 0})
    train(cfg, blob_dataset, tmp_path / "run", progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, blob_dataset, tmp_path / "run", progress=False)


def test_nan_loss_stops_with_epoch_and_phase(blob_dataset, tmp_path):
    cfg = tiny_config(**{"train.lr": 1e30, "train.lr_min": 1e29, "train.periods": 1})
    with pytest.raises(TrainingDiverged, match=r"epoch \d+ \((gamma|anneal|static) phase\)"):
        train(cfg, blob_dataset, tmp_path / "run", progress=False)


def test_sigkill_and_resume_matches_uninterrupted(blob_dataset, tmp_path):
    """A real SIGKILL of `astrovader train` at an arbitrary moment, then --resume."""
    cfg = tiny_config(**{"train.periods": 3})
    cfg.save(tmp_path / "cfg.toml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "astrovader", "train", str(blob_dataset.path), "--config",
           str(tmp_path / "cfg.toml"), "--quiet"]
    subprocess.run(cmd + [str(tmp_path / "full")], check=True, env=env)
    run = tmp_path / "killed"
    proc = subprocess.Popen(cmd + [str(run)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / CHECKPOINT).exists():
        time.sleep(0.05)
    time.sleep(0.3)  # let it get somewhere in the middle of an epoch or a checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(cmd + [str(run), "--resume"], check=True, env=env)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(run / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_empty_component_is_reseeded_by_splitting_the_largest(monkeypatch, covariance):
    import astrovader.gmm_init as tr
    from astrovader.model import AstroVaDErNet

    # planted latent means: 4 tight blobs in 2 of 4 dimensions, 600 / 200 / 200 / 200 points
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [6, 0], [0, 6], [6, 6]], float)
    sizes = [600, 200, 200, 200]
    mu = np.concatenate([c + 0.3 * rng.standard_normal((n, 2)) for c, n in zip(centres, sizes, strict=True)])
    mu = np.concatenate([mu, 0.1 * rng.standard_normal((len(mu), 2))], 1)
    logvar = np.full_like(mu, np.log(1e-3))
    monkeypatch.setattr(tr, "latent_moments", lambda *a, **k: (mu, logvar))
    cfg = tiny_config(**{"model.n_components": 5, "model.latent_dim": 4, "model.covariance": covariance})
    net = AstroVaDErNet(cfg)
    fit = fit_gmm_init(mu, 4, seed=0)
    with torch.no_grad():  # components 0-3 on the blobs; component 4 parked far away with no members
        w = np.append(fit["weights"] * 0.9, 0.1)
        means = np.vstack([fit["means"], np.full(4, 100.0)])
        var = np.vstack([fit["variances"], np.ones(4)])
        net.gmm.set_parameters(*(torch.as_tensor(a, dtype=torch.float32) for a in (w, means, var)))

    def members() -> np.ndarray:
        with torch.no_grad():
            return np.bincount(net.gmm.posterior(torch.as_tensor(mu, dtype=torch.float32)).argmax(1).numpy(),
                               minlength=5)

    before = members()
    assert before[4] == 0 and before.max() == 600
    pairs = reseed_empty_components(net, None, cfg, torch.device("cpu"), epoch=9)
    assert pairs == [(4, int(np.argmax(before)))]  # the 600-point blob was split in two
    after = members()
    assert after[4] > 100 and after.min() > 0 and after.sum() == len(mu)
    assert torch.isclose(net.gmm.weights.sum(), torch.tensor(1.0)) and (net.gmm.variances > 0).all()
    assert reseed_empty_components(net, None, cfg, torch.device("cpu"), epoch=10) == []  # nothing left to do
    cfg.train.reseed_min_fraction = 0.0
    with torch.no_grad():
        net.gmm.means[4] = 100.0
    assert reseed_empty_components(net, None, cfg, torch.device("cpu"), epoch=11) == []  # switched off


def test_training_records_reseeding_in_history(blob_dataset, tmp_path):
    train(tiny_config(), blob_dataset, tmp_path / "run", progress=False)
    hist = read_history(tmp_path / "run")
    # checked at the end of every period (epochs 4 and 7 here); "" when no component needed it
    assert all(isinstance(h["reseeded"], str) for h in hist if h["epoch"] in (4, 7))
    assert all(h["reseeded"] in ("", None) for h in hist if h["epoch"] not in (4, 7))


def test_alignment_phase_sits_between_gamma_training_and_annealing():
    cfg = tiny_config(**{"train.align_epochs": 3})
    plans = schedule(cfg)
    assert len(plans) == cfg.train.epochs == 2 + 3 + 2 * 3
    assert [p.phase for p in plans[:7]] == ["gamma"] * 2 + ["align"] * 3 + ["anneal"] * 2
    # alignment uses the full (static) GMM weight
    assert all(p.beta == 1 and p.kl_gmm_weight == plans[-1].kl_gmm_weight for p in plans[2:5])


def test_umap_initialisation_keeps_curved_clusters_together():
    """Two interleaved half-moons (plus noise dimensions): a Gaussian mixture on the points cuts each moon in
    half, the UMAP-graph initialisation recovers them; the prior is the clusters' moments in the latent space."""
    from sklearn.datasets import make_moons

    from astrovader.analysis.metrics import clustering_scores

    xy, truth = make_moons(1500, noise=0.05, random_state=0)
    z = np.hstack([xy * 3, np.random.default_rng(0).normal(0, 0.05, (1500, 2))])
    plain = fit_gmm_init(z, 2, seed=0, n_init=5)
    graph = fit_gmm_init(z, 2, seed=0, n_init=5, embedding="umap", neighbours=15)
    assert clustering_scores(truth, plain["responsibilities"].argmax(1))["accuracy"] < 0.9
    labels = graph["responsibilities"].argmax(1)
    assert clustering_scores(truth, labels)["accuracy"] > 0.99
    for k in range(2):
        np.testing.assert_allclose(graph["means"][k], z[labels == k].mean(0), atol=1e-2)
        np.testing.assert_allclose(graph["variances"][k], z[labels == k].var(0), rtol=0.05, atol=1e-4)
    assert graph["weights"].sum() == pytest.approx(1.0)
    full = fit_gmm_init(z, 2, seed=0, n_init=5, covariance="full", embedding="umap", neighbours=15)
    assert full["variances"].shape == (2, 4, 4)
    np.testing.assert_allclose(full["variances"][0], np.cov(z[labels == 0].T, bias=True), rtol=0.01, atol=2e-3)


def test_alignment_run_resumes_exactly_and_fits_its_labels(blob_dataset, tmp_path):
    cfg = tiny_config(**{"train.align_epochs": 3, "train.periods": 1})
    full = train(cfg, blob_dataset, tmp_path / "full", progress=False)
    assert [h["phase"] for h in read_history(tmp_path / "full")][2:5] == ["align"] * 3
    labels = load_file(str(tmp_path / "full" / "init_clusters.safetensors"))["labels"]
    assert labels.dtype == torch.int64 and len(labels) == min(240 - 24, 4 * 32)  # 10% validation held out
    run = tmp_path / "stopped"
    train(cfg, blob_dataset, run, progress=False, stop_after_epoch=3)  # killed inside the alignment phase
    resumed = train(cfg, blob_dataset, run, resume=True, progress=False)
    for k, v in full.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[k], v, rtol=0, atol=0, msg=k)
    (run / "init_clusters.safetensors").unlink()
    train(cfg, blob_dataset, tmp_path / "again", progress=False, stop_after_epoch=2)
    (tmp_path / "again" / "init_clusters.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="init_clusters.safetensors"):
        train(cfg, blob_dataset, tmp_path / "again", resume=True, progress=False)


def test_umap_initialisation_keeps_the_torch_thread_count():
    pytest.importorskip("umap")
    from astrovader.gmm_init import umap_embedding

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        emb = umap_embedding(np.random.default_rng(0).normal(size=(120, 4)), 2, 10, seed=0)
        assert emb.shape == (120, 2) and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_restarts_keep_the_lowest_final_loss_and_resume(blob_dataset, tmp_path):
    """train.restarts = 2: two ordinary runs (seeds 0 and 1000); the run is the one with the lower last-epoch loss."""
    import json

    from astrovader.runs import Run, load_config

    cfg = tiny_config(**{"train.restarts": 2, "train.periods": 1})
    res = train(cfg, blob_dataset, tmp_path / "best", progress=False)
    singles = {s: train(tiny_config(**{"train.seed": s, "train.periods": 1}), blob_dataset, tmp_path / f"s{s}",
                        progress=False) for s in (0, 1000)}
    note = json.loads((tmp_path / "best" / "restarts.json").read_text())
    losses = {c["seed"]: c["final_train_loss"] for c in note["candidates"]}
    assert losses == {s: r.history[-1]["train_total"] for s, r in singles.items()}  # each candidate is a plain run
    chosen = min(losses, key=losses.__getitem__)
    assert note["chosen_seed"] == chosen and losses[1000] != losses[0]
    kept = Run.open(tmp_path / "best", "cpu", allow_unfinished=False).network.state_dict()
    for k, v in singles[chosen].net.state_dict().items():
        torch.testing.assert_close(kept[k], v, rtol=0, atol=0, msg=k)
    assert load_config(tmp_path / "best").train.restarts == 2 and res.run_dir == tmp_path / "best"
    for k, v in res.net.state_dict().items():
        torch.testing.assert_close(v.cpu(), kept[k], rtol=0, atol=0, msg=k)
    # outputs say which candidate made them
    assert Run.open(tmp_path / "best", "cpu").provenance()["SEED"] == str(chosen)
    assert [h["train_total"] for h in read_history(tmp_path / "best")] == pytest.approx(
        [h["train_total"] for h in singles[chosen].history], rel=1e-6)
    # killed inside the second candidate, then resumed: the same choice and weights
    n = cfg.train.epochs
    stopped = train(cfg, blob_dataset, tmp_path / "killed", progress=False, stop_after_epoch=n - 3)
    assert len(stopped.history) < n and (tmp_path / "killed" / "restarts").is_dir()
    train(cfg, blob_dataset, tmp_path / "killed", progress=False, stop_after_epoch=n - 3, resume=True)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, blob_dataset, tmp_path / "killed", progress=False)
    assert load_config(tmp_path / "killed") == cfg  # written first: `--resume` alone finds the settings
    with pytest.raises(ValueError, match="train.restarts"):
        train(tiny_config(**{"train.restarts": 3, "train.periods": 1}), blob_dataset, tmp_path / "killed",
              progress=False, resume=True)
    train(cfg, blob_dataset, tmp_path / "killed", progress=False, resume=True)
    assert json.loads((tmp_path / "killed" / "restarts.json").read_text()) == {**note}
    for k, v in Run.open(tmp_path / "killed", "cpu").network.state_dict().items():
        torch.testing.assert_close(v, kept[k], rtol=0, atol=0, msg=k)
