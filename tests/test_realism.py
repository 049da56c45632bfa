"""`benchmark realism`: each measure answers the question it is named for, on sets whose answer is known."""

from __future__ import annotations

import json

import numpy as np

from astrovader.analysis.realism import compare, frechet_distance, memorisation, two_sample_accuracy
from astrovader.cli import main

from .conftest import blob_images
from .test_analysis import tiny_run


def _noisy(images: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(images.astype(np.int16) + rng.integers(-12, 13, images.shape), 0, 255).astype(np.uint8)


def test_distribution_distances_against_their_floor():
    rng = np.random.default_rng(0)
    same = compare(rng.normal(0, 1, 500), rng.normal(0, 1, 500), rng.normal(0, 1, 500))
    shifted = compare(rng.normal(0, 1, 500), rng.normal(1, 1, 500), rng.normal(0, 1, 500))
    assert same["w1_ratio"] < 2.5 and shifted["w1_ratio"] > 5
    assert shifted["ks"] > 0.3 > same["ks"]
    # one failed fit far out in the tail does not decide the distance
    tail = rng.normal(0, 1, 500)
    tail[0] = 1e6
    assert compare(rng.normal(0, 1, 500), tail, rng.normal(0, 1, 500))["w1_ratio"] < 2.5
    a, b = rng.normal(0, 1, (400, 5)), rng.normal(0, 1, (400, 5))
    assert frechet_distance(a, b) < 0.3 < frechet_distance(a, b + 1.0)


def test_copies_of_training_images_are_caught_and_fresh_draws_are_not():
    from sklearn.decomposition import PCA

    imgs, _ = blob_images(900, size=16, seed=3)
    flat = _noisy(imgs, 0).reshape(900, -1) / 255.0
    pca = PCA(20, random_state=0).fit(flat[:500])
    train, held, fresh = (pca.transform(flat[s]) for s in (slice(0, 500), slice(500, 700), slice(700, 900)))
    assert memorisation(train, held, train[:100])[0]["share_closer_than_real_p1"] == 1.0
    assert memorisation(train, held, fresh)[0]["share_closer_than_real_p1"] < 0.05


def test_two_sample_classifier_tells_apart_only_what_differs():
    imgs, _ = blob_images(800, size=16, seed=4)
    a, b = _noisy(imgs[:400], 1), _noisy(imgs[400:], 2)
    assert abs(two_sample_accuracy(a, b) - 0.5) < 0.12
    assert two_sample_accuracy(a, (imgs[400:] // 2).astype(np.uint8)) > 0.9  # noiseless and half as bright


def test_cli_realism_writes_tables_and_figures(tmp_path_factory, tmp_path, capsys):
    run, ds = tiny_run(tmp_path_factory)
    out = tmp_path / "realism"
    assert main(["benchmark", "realism", str(run), str(ds), "--n", "40", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "memorisation:" in text and "two-sample CNN accuracy" in text
    body = json.loads((out / "realism.json").read_text())
    assert {r["parameter"] for r in body["parameters"]} >= {"r50", "concentration", "sersic_n"}
    # the decoder's own floor sits beside every parameter (NaN here: this tiny run's reconstructions are too faint
    # for photutils to find a source, which the table must say rather than invent a number)
    assert all("w1_ratio_reconstructed" in r for r in body["parameters"])
    assert "reconstructions' ratio" in text
    assert body["n_real"] == 40 and body["provenance"]["WEIGHTS"]
    for name in ("parameters.png", "nearest.png", "parameters.csv", "components.csv"):
        assert (out / name).stat().st_size > 100
    assert main(["benchmark", "realism", str(run), str(ds), "--n", "40", "--out", str(out)]) == 2  # no overwrite
    assert main(["benchmark", "realism", str(run)]) == 2


def test_posterior_sampler_draws_where_the_members_are(tmp_path_factory):
    from astrovader.analysis.realism import posterior_sample
    from astrovader.data.dataset import Dataset
    from astrovader.inference import infer
    from astrovader.runs import Run

    run, ds = tiny_run(tmp_path_factory)
    net = Run.open(run, "cpu").network
    train = Dataset(ds).load()
    images, comps = posterior_sample(net, train, 90, seed=1)
    assert images.shape == (90, *train.shape[1:]) and images.dtype == np.uint8
    assert set(np.unique(comps)) <= {0, 1, 2}
    again, _ = posterior_sample(net, train, 90, seed=1)
    np.testing.assert_array_equal(images, again)  # seeded
    # components are drawn by the prior's weights, as generate draws them
    weights = net.gmm.weights.detach().numpy()
    many, many_comps = posterior_sample(net, train[:60], 3000, seed=2)
    np.testing.assert_allclose(np.bincount(many_comps, minlength=3) / 3000, weights / weights.sum(), atol=0.03)
    assert len(infer(net, many[:10], reconstruct=False).labels) == 10
