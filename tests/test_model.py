"""The model's maths against an independent float64 oracle and hand computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from astrovader.config import Config
from astrovader.model import (
    AstroVaDErNet,
    GMMPrior,
    kl_gmm,
    kl_gmm_full,
    kl_unit,
    minmax_responsibilities,
    reconstruction_loss,
    vade_losses,
)


@pytest.fixture(scope="module")
def reference_cases(shared_dir):
    path = shared_dir / "reference" / "vade_reference_values.json"
    if not path.is_file():
        pytest.skip("reference values not present")
    return json.loads(path.read_text())["cases"]


def _prior(case) -> GMMPrior:
    K, J = case["K"], case["J"]
    g = GMMPrior(K, J).double()
    g.set_parameters(torch.tensor(case["pi"], dtype=torch.float64), torch.tensor(case["mu_c"], dtype=torch.float64),
                     torch.tensor(case["var_c"], dtype=torch.float64))
    return g


def test_paper_parameter_counts():
    counts = AstroVaDErNet(Config.preset("paper")).count_parameters()
    assert counts["network"] == 870_889
    assert counts["gmm"] == 12 + 2 * 12 * 20


def test_posterior_gamma_and_kl_match_reference(reference_cases):
    for case in reference_cases:
        g = _prior(case)
        mu = torch.tensor(case["mu"], dtype=torch.float64)
        logvar = torch.tensor(case["logvar"], dtype=torch.float64)
        np.testing.assert_allclose(g.posterior(mu).detach().numpy(), case["posterior"], rtol=1e-9, atol=1e-12)
        gamma = minmax_responsibilities(g.log_joint(mu), 50.0)
        np.testing.assert_allclose(gamma.detach().numpy(), case["gamma_minmax_50"], rtol=1e-9, atol=1e-12)
        kl = kl_gmm(mu, logvar, gamma, g.weights, g.means, g.variances)
        np.testing.assert_allclose(kl.detach().numpy(), case["kl_gmm_per_sample"], rtol=1e-9)
        np.testing.assert_allclose(kl_unit(mu, logvar).numpy(), case["kl_unit_per_sample"], rtol=1e-12)


def _numpy_losses(x, recon, mu, logvar, pi, mu_c, var_c, scale=50.0):
    """Independent NumPy transcription of reference-facts.md."""
    rec = ((recon - x) ** 2).reshape(len(x), -1).sum(1)
    unit = -0.5 * (1 + logvar - mu**2 - np.exp(logvar)).sum(1)
    log_n = -0.5 * (np.log(2 * np.pi) + np.log(var_c)[None] + (mu[:, None] - mu_c[None]) ** 2 / var_c[None]).sum(-1)
    ell = -(log_n + np.log(pi)[None])
    s = (ell - ell.min()) / (ell.max() - ell.min()) * -scale
    g = np.exp(s - s.max(1, keepdims=True))
    g /= g.sum(1, keepdims=True)
    kl = (-0.5 * (1 + logvar).sum(1) - (g * np.log(pi)).sum(1) + (g * np.log(np.maximum(g, 1e-300))).sum(1)
          + 0.5 * (g * (np.log(var_c)[None] + (np.exp(logvar)[:, None] + (mu[:, None] - mu_c[None]) ** 2)
                        / var_c[None]).sum(-1)).sum(1))
    return rec, unit, kl


def test_loss_terms_against_numpy_on_random_inputs():
    rng = np.random.default_rng(3)
    cfg = Config.preset("demo")
    net = AstroVaDErNet(cfg).double()
    B, J, K = 6, cfg.model.latent_dim, cfg.model.n_components
    pi = rng.dirichlet(np.ones(K))
    mu_c, var_c = rng.normal(size=(K, J)), rng.uniform(0.2, 2, size=(K, J))
    net.gmm.set_parameters(torch.tensor(pi), torch.tensor(mu_c), torch.tensor(var_c))
    x = rng.uniform(size=(B, 1, 32, 32))
    recon = rng.uniform(size=x.shape)
    mu, logvar = rng.normal(size=(B, J)), rng.normal(-1, 0.5, size=(B, J))
    out = {"mu": torch.tensor(mu), "logvar": torch.tensor(logvar), "recon": torch.tensor(recon)}
    terms = vade_losses(net, torch.tensor(x), out, cfg.loss, gmm_phase=True)
    rec, unit, kl = _numpy_losses(x, recon, mu, logvar, pi, mu_c, var_c)
    np.testing.assert_allclose(terms["recon"].detach().numpy(), rec, rtol=1e-6)
    np.testing.assert_allclose(terms["kl_unit"].detach().numpy(), unit, rtol=1e-9)
    np.testing.assert_allclose(terms["kl_gmm"].detach().numpy(), kl, rtol=1e-6)
    # MSE x D equals the per-pixel mean times the number of pixel values
    np.testing.assert_allclose(rec, ((recon - x) ** 2).reshape(B, -1).mean(1) * 32 * 32)


def test_bce_reconstruction_matches_formula():
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    logits = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    p = torch.sigmoid(logits)
    expect = -(x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)
    torch.testing.assert_close(reconstruction_loss(logits, x, "bce"), expect)


def test_minmax_responsibilities_properties():
    torch.manual_seed(0)
    log_joint = torch.randn(16, 5, dtype=torch.float64) * 30
    gamma = minmax_responsibilities(log_joint, 50.0)
    torch.testing.assert_close(gamma.sum(1), torch.ones(16, dtype=torch.float64))
    assert (gamma > 0).all()
    # the most probable (sample, cluster) pair gets logit 0 and the least -50: ratio bounded by e^50
    assert gamma.min() >= np.exp(-50) / 5
    # same ranking within a row as the exact posterior
    assert torch.equal(gamma.argmax(1), torch.softmax(log_joint, 1).argmax(1))
    # invariant to adding a constant to the whole matrix
    torch.testing.assert_close(minmax_responsibilities(log_joint + 1e4, 50.0), gamma)
    # a constant matrix (max == min) gives uniform responsibilities, not NaN
    flat = minmax_responsibilities(torch.zeros(4, 3), 50.0)
    torch.testing.assert_close(flat, torch.full((4, 3), 1 / 3))


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_no_nan_on_extreme_inputs(fill):
    cfg = Config.preset("demo")
    net = AstroVaDErNet(cfg)
    x = torch.full((4, 1, 32, 32), fill)
    out = net(x)
    terms = vade_losses(net, x, out, cfg.loss, gmm_phase=True)
    for v in terms.values():
        assert torch.isfinite(v).all()
    # huge latent means and log-variances: the loss stays finite and so do its gradients
    mu = torch.full((4, cfg.model.latent_dim), 1e6, requires_grad=True)
    logvar = torch.full((4, cfg.model.latent_dim), 1e3).clamp(-cfg.loss.logvar_clamp, cfg.loss.logvar_clamp)
    out = {"mu": mu, "logvar": logvar, "recon": net.decoder(mu)}
    terms = vade_losses(net, x, out, cfg.loss, gmm_phase=True)
    total = (terms["recon"] + terms["kl_gmm"]).sum()
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(mu.grad).all()
    assert torch.isfinite(net.gmm.posterior(mu.detach())).all()


def test_gmm_weights_and_variances_stay_valid():
    g = GMMPrior(4, 3)
    with torch.no_grad():
        g.logits.copy_(torch.tensor([-50.0, 3.0, 100.0, 0.0]))
        g.log_vars.fill_(-30.0)
    assert torch.isclose(g.weights.sum(), torch.tensor(1.0))
    assert (g.variances > 0).all()


def test_encoder_decoder_shapes_configurable():
    cfg = Config.resolve(overrides=["model.image_size=64", "model.channels=3", "model.latent_dim=7",
                                    "model.n_components=5", "model.encoder_filters=[8,8]",
                                    "model.encoder_kernels=[3,5]", "model.decoder_filters=[8,4]",
                                    "model.decoder_kernels=[3,3]"])
    net = AstroVaDErNet(cfg)
    out = net(torch.rand(2, 3, 64, 64))
    assert out["mu"].shape == (2, 7) and out["recon"].shape == (2, 3, 64, 64)
    assert (out["recon"] >= 0).all()  # ReLU output for MSE
    assert net.gmm.posterior(out["mu"]).shape == (2, 5)


def test_full_covariance_prior_reduces_to_diag_and_matches_numpy():
    rng = np.random.default_rng(7)
    K, J, B = 3, 4, 5
    pi = rng.dirichlet(np.ones(K))
    mu_c = rng.normal(size=(K, J))
    A = rng.normal(size=(K, J, J))
    cov = A @ A.transpose(0, 2, 1) + 0.5 * np.eye(J)
    mu, logvar = rng.normal(size=(B, J)), rng.normal(-1, 0.3, size=(B, J))
    # with diagonal covariances the full prior equals the diagonal one
    d, f = GMMPrior(K, J).double(), GMMPrior(K, J, "full").double()
    var = np.diagonal(cov, axis1=1, axis2=2).copy()
    for g in (d, f):
        g.set_parameters(torch.tensor(pi), torch.tensor(mu_c), torch.tensor(var))
    t_mu = torch.tensor(mu)
    torch.testing.assert_close(f.log_joint(t_mu), d.log_joint(t_mu))
    gamma = minmax_responsibilities(d.log_joint(t_mu))
    torch.testing.assert_close(
        kl_gmm_full(t_mu, torch.tensor(logvar), gamma, f.weights, f.means, f.scale_tril),
        kl_gmm(t_mu, torch.tensor(logvar), gamma, d.weights, d.means, d.variances))
    # a full covariance against a direct NumPy computation
    f.set_parameters(torch.tensor(pi), torch.tensor(mu_c), torch.tensor(cov))
    torch.testing.assert_close(f.variances, torch.tensor(var))
    inv = np.linalg.inv(cov)
    diff = mu[:, None] - mu_c[None]
    maha = np.einsum("bkj,kjl,bkl->bk", diff, inv, diff)
    logdet = np.linalg.slogdet(cov)[1]
    log_joint = np.log(pi)[None] - 0.5 * (J * np.log(2 * np.pi) + logdet[None] + maha)
    np.testing.assert_allclose(f.log_joint(t_mu).detach().numpy(), log_joint, rtol=1e-10)
    g = minmax_responsibilities(torch.tensor(log_joint)).numpy()
    trace = np.exp(logvar) @ np.diagonal(inv, axis1=1, axis2=2).T
    expect = (-0.5 * (1 + logvar).sum(1) + (g * np.log(g)).sum(1) - (g * np.log(pi)).sum(1)
              + 0.5 * (g * (logdet[None] + trace + maha)).sum(1))
    got = kl_gmm_full(t_mu, torch.tensor(logvar), torch.tensor(g), f.weights, f.means, f.scale_tril)
    np.testing.assert_allclose(got.detach().numpy(), expect, rtol=1e-9)
    assert f.n_parameters() == K + K * J + K * J * (J + 1) // 2


def test_section6_options_keep_shapes_and_old_weight_names():
    base = Config.preset("sdss64-k3")
    plain = AstroVaDErNet(base)
    x = torch.rand(2, 1, 64, 64)
    for overrides in (["model.residual=true"], ["model.upsample_first=true"],
                      ["model.residual=true", "model.upsample_first=true"]):
        net = AstroVaDErNet(base.with_overrides(overrides))
        assert net(x)["recon"].shape == (2, 1, 64, 64)
    # models trained before the options existed load unchanged: the plain layout's weight names stay flat
    assert "encoder.features.0.weight" in plain.state_dict()
    up = AstroVaDErNet(base.with_overrides(["model.upsample_first=true"]))
    # the same convolutions, at the finer scale
    assert up.count_parameters() == plain.count_parameters()
    assert isinstance(up.decoder.features[0], torch.nn.Upsample)
    assert isinstance(plain.decoder.features[4], torch.nn.Upsample)
    res = AstroVaDErNet(base.with_overrides(["model.residual=true"]))
    first = res.encoder.features[0]
    assert isinstance(first.skip, torch.nn.Conv2d)  # 1 -> 16 channels: a 1x1 projection
    # with the second convolution silenced the block passes its (projected) input through the activation
    torch.nn.init.zeros_(first.conv2.weight)
    torch.nn.init.zeros_(first.conv2.bias)
    inp = torch.rand(1, 1, 64, 64)
    torch.testing.assert_close(first(inp), first.act(first.skip(inp)))


def test_calibrated_reconstruction_is_gaussian_nll_at_the_batch_variance():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 8, 8, generator=g)
    recon = (x + 0.05 * torch.randn(5, 1, 8, 8, generator=g)).requires_grad_()
    loss = reconstruction_loss(recon, x, "calibrated")
    sse = (recon - x).pow(2).flatten(1).sum(1).detach()
    var = sse.mean() / 64
    np.testing.assert_allclose(loss.detach().numpy(), (0.5 * (sse / var + 64 * var.log())).numpy(), rtol=1e-6)
    # the gradient is the MSE x D gradient divided by 2 sigma^2: reconstruction weighted by how well it is done
    loss.sum().backward()
    np.testing.assert_allclose(recon.grad.numpy(), ((recon - x) / var).detach().numpy(), rtol=1e-5)
    # a perfect batch does not divide by zero
    assert torch.isfinite(reconstruction_loss(x, x, "calibrated")).all()
