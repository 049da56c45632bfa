"""The contrastive term: random views a galaxy's class does not depend on, NT-Xent between their latent means."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from astrovader.config import Config, ConfigError
from astrovader.feeding import contrastive_view
from astrovader.model import nt_xent
from astrovader.runs import read_history
from astrovader.train import train

from .test_train import tiny_config


def _galaxy(n: int = 6, size: int = 32) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size) - (size - 1) / 2, torch.arange(size) - (size - 1) / 2, indexing="ij")
    disc = torch.exp(-(xx**2 / 40 + yy**2 / 6))  # an elongated galaxy along x on a dark sky
    return disc.expand(n, 1, size, size).clone() * 0.8


def _views_only(**keys: float) -> Config:
    cfg = Config.preset("demo")
    for k in ("view_scale", "view_shift", "view_blur", "view_gain", "view_noise"):
        setattr(cfg.train, k, keys.get(k, 0.0))
    return cfg


def test_views_turn_the_galaxy_and_keep_its_light_without_gain():
    x = _galaxy(64)
    y = contrastive_view(x, torch.Generator().manual_seed(0), _views_only().train)
    # any angle: the second moments' orientation covers the circle, and the light is kept to a few per cent
    assert torch.allclose(y.sum((1, 2, 3)), x.sum((1, 2, 3)), rtol=0.05)
    c = torch.arange(32.0) - 15.5
    w = y[:, 0]
    mxx = (w * c[None, :] ** 2).sum((1, 2))
    myy = (w * c[:, None] ** 2).sum((1, 2))
    mxy = (w * c[:, None] * c[None, :]).sum((1, 2))
    angle = torch.rad2deg(0.5 * torch.atan2(2 * mxy, mxx - myy)) % 180
    assert np.histogram(angle.numpy(), bins=4, range=(0, 180))[0].min() >= 5


def test_gain_scale_blur_and_noise_stay_in_their_ranges():
    x = _galaxy(200)
    g = torch.Generator().manual_seed(1)
    gained = contrastive_view(x, g, _views_only(view_gain=0.3).train)
    ratio = gained.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert ratio.min() >= 10**-0.3 * 0.95 and ratio.max() <= 10**0.3 * 1.05 and ratio.max() / ratio.min() > 2.5
    blurred = contrastive_view(x, g, _views_only(view_blur=1.5).train)
    assert blurred.amax((1, 2, 3)).min() < x.amax() * 0.9  # some views are visibly blurred
    noisy = contrastive_view(torch.zeros(50, 1, 32, 32) + 0.5, g, _views_only(view_noise=0.05).train)
    assert 0 < noisy.std((1, 2, 3)).max() <= 0.05 * 1.2
    scaled = contrastive_view(x, g, _views_only(view_scale=0.3).train)
    size = scaled.sum((1, 2, 3)) / x.sum((1, 2, 3))  # flux scales with area
    assert 0.65**2 * 0.9 < size.min() < 0.9 and 1.1 < size.max() < 1.35**2 * 1.1
    assert scaled.min() >= 0 and scaled.max() <= 1


def test_views_of_a_shard_are_the_slices_of_the_global_draw():
    x = torch.rand(8, 1, 16, 16)
    t = Config.preset("demo").train
    full = contrastive_view(x, torch.Generator().manual_seed(3), t)
    parts = [contrastive_view(x[r * 4:(r + 1) * 4], torch.Generator().manual_seed(3), t, (r, 2)) for r in range(2)]
    assert torch.allclose(torch.cat(parts), full, atol=1e-6)


def test_nt_xent_is_low_for_matching_pairs_and_log_2b_minus_1_for_identical_vectors():
    a = torch.eye(8)
    assert nt_xent(a, a, 0.1).max() < 1e-3  # every vector finds its partner at once
    same = torch.ones(8, 4)
    assert torch.allclose(nt_xent(same, same, 0.5), torch.full((8,), math.log(15)))  # no information: chance


def test_euclidean_nt_xent_uses_squared_distances_not_directions():
    a = torch.tensor([[1.0, 0.0], [2.0, 0.0]])  # same direction, different lengths
    b = a + 0.01
    # cosine similarity cannot tell the pairs apart; squared distance can
    assert torch.allclose(nt_xent(a, b, 0.5), torch.full((2,), math.log(3)), atol=1e-3)
    euclid = nt_xent(a, b, 0.5, "euclidean")
    z = torch.cat([a, b])
    logits = -torch.cdist(z, z).pow(2) / 0.5
    # image 0 must pick its view (row 2) out of rows 1-3, and its view image 0 out of rows 0, 1, 3
    row0 = torch.logsumexp(logits[0, [1, 2, 3]], 0) - logits[0, 2]
    row2 = torch.logsumexp(logits[2, [0, 1, 3]], 0) - logits[2, 0]
    assert euclid[0].item() == pytest.approx(0.5 * (row0 + row2).item(), rel=1e-5)
    assert euclid.max() < 0.3 < math.log(3)  # chance: log 3
    with pytest.raises(ValueError, match="euclidean"):
        nt_xent(a, b, 0.5, "manhattan")


@pytest.mark.parametrize("key,value", [("loss.contrastive", -1), ("loss.contrastive_temperature", 0),
                                       ("loss.contrastive_similarity", "dot"), ("train.view_scale", 1.0),
                                       ("train.view_gain", 3), ("train.view_blur", 9)])
def test_bad_contrastive_settings_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Config.resolve("demo", overrides=[f"{key}={value}"])


def test_training_with_the_contrastive_term_records_it_and_resumes_exactly(blob_dataset, tmp_path):
    cfg = tiny_config(**{"loss.contrastive": 5.0})
    full = train(cfg, blob_dataset, tmp_path / "full", progress=False)
    hist = read_history(tmp_path / "full")
    assert all(np.isfinite(h["train_contrastive"]) for h in hist)
    assert hist[-1]["train_contrastive"] < hist[0]["train_contrastive"] < math.log(2 * 32 - 1) + 0.1
    train(cfg, blob_dataset, tmp_path / "part", progress=False, stop_after_epoch=2)
    resumed = train(cfg, blob_dataset, tmp_path / "part", resume=True, progress=False)
    for k, v in full.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[k], v, rtol=0, atol=0, msg=k)
    # off by default: no column, and the paper's runs draw no extra random numbers
    train(tiny_config(), blob_dataset, tmp_path / "off", progress=False)
    assert "train_contrastive" not in read_history(tmp_path / "off")[0]


def test_scan_epochs_follow_vade_and_pull_neighbours_into_one_component(blob_dataset, tmp_path):
    from astrovader.gmm_init import neighbour_set
    from astrovader.model import scan_loss
    from astrovader.schedule import schedule

    cfg = tiny_config(**{"train.scan_epochs": 2, "train.scan_neighbours": 5})
    assert [p.phase for p in schedule(cfg)][-3:] == ["static", "scan", "scan"] and cfg.train.epochs == 10
    full = train(cfg, blob_dataset, tmp_path / "full", progress=False)
    hist = read_history(tmp_path / "full")
    assert hist[-3].get("train_scan") in (None, "") and all(np.isfinite(h["train_scan"]) for h in hist[-2:])
    # the loss: a galaxy and a neighbour in one component with confidence is low, split across two is high
    from astrovader.model import AstroVaDErNet

    net = AstroVaDErNet(cfg)
    means = torch.zeros(3, 4)
    means[:, 0] = torch.tensor([-5.0, 0.0, 5.0])
    net.gmm.set_parameters(torch.full((3,), 1 / 3), means, torch.ones(3, 4))
    mu = means[[0, 2]]
    lo = cfg.loss
    lo.scan_entropy = 0.0
    images = torch.zeros(2, 1, 16, 16)
    net.encode = lambda x: (mu.clone(), torch.zeros_like(mu))  # the neighbours' latents: the same two means
    together = scan_loss(net, mu, images, lo)
    net.encode = lambda x: (mu.flip(0), torch.zeros_like(mu))
    assert scan_loss(net, mu, images, lo) > together + 1
    del net.encode
    net = full.net
    # neighbours are mined among the initialisation images by their latent means, each point not its own
    from astrovader.data.dataset import open_dataset
    from astrovader.feeding import BatchFeeder
    from astrovader.gmm_init import init_batches

    ds = open_dataset(blob_dataset)
    feeder = BatchFeeder(ds, np.arange(len(ds)), torch.device("cpu"), 1.0)
    imgs, idx = neighbour_set(net, torch.cat(list(init_batches(feeder, cfg.train, torch.device("cpu"), -1))), cfg)
    assert idx.shape == (len(imgs), 5) and not (idx == torch.arange(len(imgs))[:, None]).any()
    # resuming inside the scan epochs mines the same neighbours again: identical to the uninterrupted run
    train(cfg, blob_dataset, tmp_path / "part", progress=False, stop_after_epoch=8)
    resumed = train(cfg, blob_dataset, tmp_path / "part", resume=True, progress=False)
    for k, v in train(cfg, blob_dataset, tmp_path / "again", progress=False).net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[k], v, rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("group", ["c4", "d4"])
def test_group_pooled_encoder_gives_every_turned_copy_the_same_latents(group):
    from astrovader.model import AstroVaDErNet

    cfg = tiny_config(**{"model.group_pooling": f"'{group}'"})
    net = AstroVaDErNet(cfg).eval()
    x = torch.rand(3, 1, 16, 16)
    mu = net.encode(x)[0]
    with torch.no_grad():
        for k in (1, 2, 3):
            torch.testing.assert_close(net.encode(torch.rot90(x, k, dims=(-2, -1)))[0], mu, atol=1e-5, rtol=1e-5)
        mirrored = net.encode(x.flip(-1))[0]
    assert torch.allclose(mirrored, mu, atol=1e-5) == (group == "d4")
    plain = AstroVaDErNet(tiny_config())
    assert set(plain.state_dict()) == set(net.state_dict())  # the same weights: only the pooling differs
    with pytest.raises(ConfigError, match="model.group_pooling"):
        tiny_config(**{"model.group_pooling": "'so2'"})
