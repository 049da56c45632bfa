"""Inference's channels-last copy and the opt-in bf16 mode: the same numbers as the plain float32 network, a copy
that follows the weights, and the arithmetic recorded wherever a run's output goes."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from astrovader import Config, sampling
from astrovader.cli import main
from astrovader.data.dataset import write_dataset
from astrovader.inference import InferenceNet, cpu_chunk, infer
from astrovader.model import AstroVaDErNet

SMALL = ["model.image_size=32", "model.encoder_filters=[8,16]", "model.encoder_kernels=[3,3]",
         "model.decoder_filters=[16,8]", "model.decoder_kernels=[3,3]", "model.latent_dim=6",
         "model.n_components=4"]


@pytest.fixture()
def net():
    torch.manual_seed(0)
    return AstroVaDErNet(Config.resolve("demo", overrides=SMALL)).eval()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (300, 1, 32, 32), dtype=np.uint8)


@torch.no_grad()
def _plain(net, images):
    """The contiguous float32 network on the whole batch: what inference computed before the copy."""
    x = torch.from_numpy(images).float() / 255
    mu, logvar = net.encode(x)
    return mu.numpy(), net.gmm.posterior(mu).numpy(), (net.decode(mu) - x).pow(2).flatten(1).mean(1).numpy()


def test_float32_copy_agrees_with_the_plain_network(net, images):
    mu, probs, mse = _plain(net, images)
    got = infer(net, images, batch_size=128)
    assert np.abs(got.probs - probs).max() < 1e-5
    assert np.abs(got.mu - mu).max() < 1e-4
    np.testing.assert_allclose(got.recon_mse, mse, rtol=1e-4)
    # the caller's network keeps its own memory format (it may go on training)
    assert all(p.is_contiguous() for p in net.parameters())


def test_the_copy_follows_new_weights(net, images):
    before = infer(net, images[:20]).mu
    with torch.no_grad():
        net.encoder.mu.bias.add_(1.0)  # an optimiser step or loaded weights change parameters in place
    after = infer(net, images[:20]).mu
    np.testing.assert_allclose(after, before + 1.0, atol=1e-4)
    np.testing.assert_allclose(after, _plain(net, images[:20])[0], atol=1e-4)


def test_bf16_moves_only_the_decoder(net, images):
    ref = infer(net, images)
    got = infer(net, images, precision="bf16")
    np.testing.assert_array_equal(got.probs, ref.probs)  # the encoder stays float32
    np.testing.assert_array_equal(got.mu, ref.mu)
    assert np.abs(got.recon_mse / ref.recon_mse - 1).max() < 0.05
    assert InferenceNet(net, "bf16").decode_chunk == 2 * InferenceNet(net).decode_chunk
    with pytest.raises(ValueError, match="float32, bf16"):
        infer(net, images, precision="fp16")


def test_cpu_chunk_keeps_activations_in_cache():
    assert cpu_chunk(16 * 64 * 64, 4) == 32  # 256 KB an image: 32 in 8 MB
    assert cpu_chunk(16 * 64 * 64, 2) == 64
    assert cpu_chunk(64 * 128 * 128, 4) == 8  # never fewer than 8
    assert cpu_chunk(1, 4) == 1024  # never more than 1024


def test_precision_is_recorded_and_never_mixed(net, images, tmp_path):
    from astrovader.predict import predict_dataset

    ds = write_dataset(tmp_path / "ds", images)
    out = predict_dataset(net, ds, tmp_path / "p.parquet", progress=False, precision="bf16")
    assert pq.read_schema(out).metadata[b"PRECISN"] == b"bf16"
    out = predict_dataset(net, ds, tmp_path / "q.parquet", progress=False)
    assert pq.read_schema(out).metadata[b"PRECISN"] == b"float32"
    gen = sampling.generate_to_dataset(net, tmp_path / "gen", 64, batch_size=32, progress=False, precision="bf16",
                                       stop_after_batches=1)
    with pytest.raises(Exception, match="precision: 'bf16' there, 'float32' now"):
        sampling.generate_to_dataset(net, gen, 64, batch_size=32, progress=False)
    sampling.generate_to_dataset(net, gen, 64, batch_size=32, progress=False, precision="bf16")  # resumes


def test_cli_precision_option(tmp_path):
    from astropy.io import fits

    from astrovader import AstroVaDEr

    from .test_predict import TINY

    ds = write_dataset(tmp_path / "ds", np.random.default_rng(1).integers(0, 256, (64, 1, 16, 16), dtype=np.uint8))
    AstroVaDEr(Config.resolve("demo", overrides=TINY)).fit(ds, run_dir=tmp_path / "run", progress=False)
    run = str(tmp_path / "run")
    assert main(["predict", run, str(ds.path), str(tmp_path / "p.fits"), "--precision", "bf16", "--quiet"]) == 0
    with fits.open(tmp_path / "p.fits") as hdul:
        assert hdul[1].header["PRECISN"] == "bf16"
    assert main(["generate", run, str(tmp_path / "g.fits"), "--n", "8", "--precision", "bf16", "--quiet"]) == 0
    with fits.open(tmp_path / "g.fits") as hdul:
        assert hdul[0].header["PRECISN"] == "bf16"
    with pytest.raises(SystemExit) as exc:
        main(["predict", run, str(ds.path), str(tmp_path / "x.parquet"), "--precision", "fp8"])
    assert exc.value.code == 2
