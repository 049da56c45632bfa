"""The benchmarks measure the right thing: the FLOP counter agrees with a hand count of the architecture,
and the inference baseline computes the same catalogue as ``predict_dataset`` (so its ratio compares like
with like). No timings are asserted: they depend on the machine."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from astrovader import Config
from astrovader.predict import predict_dataset

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_predict  # noqa: E402
import flops  # noqa: E402


def hand_forward_flops(cfg: Config) -> int:
    """2 x multiply-accumulates of every convolution (stride 1, 'same' padding) and linear layer, written
    out from the config alone, independently of the module code."""
    m = cfg.model
    total, cin, side = 0, m.channels, m.image_size
    for f, k in zip(m.encoder_filters, m.encoder_kernels, strict=True):
        total += 2 * side * side * k * k * (cin * f + f * f)
        cin, side = f, side // 2
    flat = cin * side * side
    total += 2 * 2 * flat * m.latent_dim  # mu and log-variance heads
    total += 2 * m.latent_dim * flat  # decoder fc back to the last encoder feature map
    for f, k in zip(m.decoder_filters, m.decoder_kernels, strict=True):
        total += 2 * side * side * k * k * (cin * f + f * f)
        cin, side = f, side * 2
    total += 2 * side * side * m.output_kernel**2 * cin * m.channels
    return total


@pytest.mark.parametrize("preset", ["demo"])
def test_flop_counter_matches_hand_count(preset):
    cfg = Config.preset(preset)
    counted = flops.count_flops(cfg)
    expected = hand_forward_flops(cfg)
    assert counted["forward"] == pytest.approx(expected, rel=0.05)
    # backward costs about two forwards (input and weight gradients; none for the first conv's input)
    assert 2.5 < counted["train_step"] / counted["forward"] < 3.2


def test_paper_forward_flops_order_of_magnitude():
    """About 5 GFLOP per 128 px image: the figure the scaling model in docs/scaling.md is built on."""
    cfg = Config.preset("paper")
    assert hand_forward_flops(cfg) == pytest.approx(4.94e9, rel=0.02)


def test_predict_baseline_equals_predict_dataset(tmp_path):
    torch.set_num_threads(1)
    cfg = Config.resolve("demo", overrides=["model.image_size=16", "model.encoder_filters=[4,4]",
                                            "model.encoder_kernels=[3,3]", "model.decoder_filters=[4,4]",
                                            "model.decoder_kernels=[3,3]", "model.latent_dim=4",
                                            "model.n_components=3"])
    device = torch.device("cpu")
    ds = bench_predict.make_dataset(tmp_path / "ds", cfg, 300)
    net = bench_predict.make_net(cfg, device)
    base = pd.read_parquet(bench_predict.baseline_predict(net, ds, tmp_path / "base.parquet", device, 64))
    opt = pd.read_parquet(predict_dataset(net, ds, tmp_path / "opt.parquet", batch_size=64,
                                          progress=False))
    assert list(base.columns) == list(opt.columns)
    assert len(base) == len(opt) == 300
    np.testing.assert_array_equal(base["id"].to_numpy(), opt["id"].to_numpy())
    np.testing.assert_array_equal(base["component"].to_numpy(), opt["component"].to_numpy())
    for col in base.columns:
        np.testing.assert_allclose(base[col].to_numpy(np.float64), opt[col].to_numpy(np.float64), rtol=1e-5,
                                   atol=1e-6, err_msg=col)
