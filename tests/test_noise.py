"""Survey sky noise for synthetic stamps: measured against the simulator's truth, reproduced by `generate --noise`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from astrovader.data.noise import SkyNoise, measure_sky_noise
from astrovader.data.simulate import pixel_stretch, simulate_galaxies


@pytest.fixture(scope="module")
def simulated():
    return simulate_galaxies(200, size=32, seed=5, workers=1, progress=False)


def test_measured_noise_matches_the_simulators(simulated):
    images, truth = simulated
    noise = measure_sky_noise(images, pixel_stretch())
    # the simulator's Poisson sky noise, sqrt(sky), per stamp; a plain standard deviation of the clipped sky
    # would read about two thirds of it
    assert noise.sigma == pytest.approx(truth["noise_sigma"].median(), rel=0.1)
    assert noise.correlation < 0.1  # independent pixels


def test_noise_added_reads_back_with_its_level_and_correlation(simulated):
    images, _ = simulated
    stretch = pixel_stretch()
    flat = np.full((300, 1, 32, 32), int(round(stretch.forward(np.array(0.0)) * 255)), np.uint8)
    for corr in (0.0, 0.5):
        model = SkyNoise(sigma=11.0, correlation=corr, stretch=stretch)
        noisy = model.add(flat, model.field(np.random.default_rng(0), flat.shape))
        back = measure_sky_noise(noisy, stretch)
        assert back.sigma == pytest.approx(11.0, rel=0.1)
        assert back.correlation == pytest.approx(corr, abs=0.1)
    # the sky of the result sits at zero flux, as the survey's does, whatever the decoder's sky was
    bright_sky = np.full((50, 1, 32, 32), 40, np.uint8)
    model = SkyNoise(sigma=11.0, correlation=0.0, stretch=stretch)
    out = model.add(bright_sky, model.field(np.random.default_rng(1), bright_sky.shape))
    assert abs(np.median(stretch.flux(out))) < 1.5


def test_generate_with_noise_is_reproducible_recorded_and_not_mixed(tmp_path, capsys):
    from astrovader import AstroVaDEr, Config
    from astrovader.cli import main
    from astrovader.data.dataset import Dataset, write_dataset

    from .test_predict import TINY

    images, truth = simulate_galaxies(96, size=16, seed=1, workers=1, progress=False)
    ds = write_dataset(tmp_path / "ds", images, truth.assign(id=np.arange(96)),
                       meta={"pixel_stretch": pixel_stretch().as_meta()})
    AstroVaDEr(Config.resolve("demo", overrides=TINY)).fit(ds, run_dir=tmp_path / "run", progress=False)
    run = str(tmp_path / "run")
    assert main(["generate", run, str(tmp_path / "a"), "--n", "40", "--noise", "--batch-size", "16", "--quiet",
                 "--no-consistency"]) == 0
    assert "sky noise measured on" in capsys.readouterr().out
    assert main(["generate", run, str(tmp_path / "b"), "--n", "40", "--noise", "--batch-size", "32", "--quiet",
                 "--no-consistency"]) == 0
    a, b = Dataset(tmp_path / "a").load(), Dataset(tmp_path / "b").load()
    np.testing.assert_array_equal(a, b)  # the noise does not depend on the batching
    assert main(["generate", run, str(tmp_path / "c"), "--n", "40", "--quiet", "--no-consistency"]) == 0
    plain = Dataset(tmp_path / "c").load()
    assert (a != plain).mean() > 0.3  # noise on most pixels
    meta = json.loads((tmp_path / "a" / "dataset.json").read_text())["generated"]["noise"]
    assert meta["sigma"] > 0 and meta["stretch"]["kind"] == "asinh"
    assert main(["generate", run, str(tmp_path / "a"), "--n", "48", "--quiet", "--no-consistency"]) == 2
    assert "noise" in capsys.readouterr().err
