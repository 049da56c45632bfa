"""Generation and latent exploration: datasets of synthetic galaxies (reproducible, resumable, bounded
memory), component consistency, the shortest route, interpolation, traversal, deblending and the CLI."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from astrovader import AstroVaDEr, Config, latent_paths, sampling
from astrovader.analysis.explore_figures import generation_figures
from astrovader.cli import main
from astrovader.data.dataset import Dataset, DatasetError, write_dataset

from .conftest import blob_images
from .test_predict import TINY


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    imgs, labels = blob_images(300, size=16, seed=1)
    ds = write_dataset(tmp / "ds", imgs, pd.DataFrame({"id": np.arange(500, 800), "true_class": labels}))
    model = AstroVaDEr(Config.resolve("demo", overrides=TINY)).fit(ds, run_dir=tmp / "run", progress=False)
    return tmp, ds, model


def _read(path) -> tuple[np.ndarray, pd.DataFrame, Dataset]:
    ds = Dataset(path)
    return ds.load(), ds.catalog, ds


# ------------------------------------------------------------------------------------------------
# generating datasets
# ------------------------------------------------------------------------------------------------
def test_generate_cli_dataset_is_predictable_and_consistency_is_right(trained, tmp_path, capsys):
    tmp, _, model = trained
    out = tmp_path / "synth"
    assert main(["generate", str(tmp / "run"), str(out), "--n", "1000", "--batch-size", "128", "--quiet"]) == 0
    printed = capsys.readouterr().out
    imgs, cat, ds = _read(out)
    J = model.config.model.latent_dim
    assert len(ds) == 1000 and ds.complete and imgs.shape == (1000, 1, 16, 16) and imgs.dtype == np.uint8
    assert list(cat.columns) == ["id", "component"] + [f"z_{j}" for j in range(J)]
    assert cat["id"].tolist() == list(range(1000))
    assert set(cat["component"]) <= {0, 1, 2} and imgs.max() > 0  # valid range by dtype; not blank
    # the catalogue's z decodes to the stored pixels (FastDecoder vs the estimator: at most 1 grey level)
    z = cat[[f"z_{j}" for j in range(J)]].to_numpy().copy()
    ref = np.rint(model.decode(z[:200]) * 255).astype(int)
    assert np.abs(ref - imgs[:200].astype(int)).max() <= 1
    # the components follow the mixture weights
    w = model.net.gmm.weights.detach().numpy()
    np.testing.assert_allclose(np.bincount(cat["component"], minlength=3) / 1000, w, atol=0.06)

    # `astrovader predict` reads it, and the consistency printed is what its catalogue says
    assert main(["predict", str(tmp / "run"), str(out), str(tmp_path / "p.parquet"), "--quiet"]) == 0
    pred = pd.read_parquet(tmp_path / "p.parquet")
    drawn, assigned = cat["component"].to_numpy(), pred["component"].to_numpy()
    expected = {k: float((assigned[drawn == k] == k).mean()) for k in np.unique(drawn)}
    table = sampling.component_consistency(model.net, out)
    assert dict(zip(table["component"], table["consistency"], strict=True)) == pytest.approx(expected)
    assert f"mean over components: {np.mean(list(expected.values())):.3f}" in printed
    rows = {int(m[1]): float(m[3]) for m in re.finditer(r"^\s+(\d+)\s+(\d+)\s+([\d.]+)$", printed, re.M)}
    assert rows == pytest.approx(expected, abs=5e-4)


def test_consistency_from_assignments():
    drawn = np.array([0, 0, 0, 0, 2, 2, 2])
    assigned = np.array([0, 0, 1, 0, 2, 0, 1])
    t = sampling.consistency_from_assignments(drawn, assigned, 3)
    assert t["component"].tolist() == [0, 2]  # component 1 was never drawn: no row, not a 0
    assert t["n"].tolist() == [4, 3]
    np.testing.assert_allclose(t["consistency"], [0.75, 1 / 3])
    assert "mean over components: 0.542" in sampling.format_consistency(t)


def test_same_seed_same_images_and_other_seeds_differ(trained, tmp_path):
    _, _, model = trained
    a = sampling.generate_to_dataset(model.net, tmp_path / "a", 600, seed=5, batch_size=128, progress=False)
    b = sampling.generate_to_dataset(model.net, tmp_path / "b", 600, seed=5, batch_size=128, progress=False)
    c = sampling.generate_to_dataset(model.net, tmp_path / "c", 600, seed=6, batch_size=128, progress=False)
    d = sampling.generate_to_dataset(model.net, tmp_path / "d", 600, seed=5, batch_size=300, progress=False)
    ia, ca, _ = _read(a)
    ib, cb, _ = _read(b)
    np.testing.assert_array_equal(ia, ib)
    pd.testing.assert_frame_equal(ca, cb)
    assert not np.array_equal(ia, _read(c)[0])
    # the random numbers do not depend on the batch size: same latents; pixels within a grey level
    idd, cd, _ = _read(d)
    pd.testing.assert_frame_equal(ca, cd)
    assert np.abs(ia.astype(int) - idd.astype(int)).max() <= 1


def test_resume_after_interruption_gives_identical_bytes(trained, tmp_path):
    _, _, model = trained
    kw = dict(components=[0, 2], temperature=0.5, seed=3, batch_size=100, progress=False)
    full = sampling.generate_to_dataset(model.net, tmp_path / "full", 750, **kw)
    part = sampling.generate_to_dataset(model.net, tmp_path / "part", 750, **kw, stop_after_batches=3, commit_every=100)
    ds = Dataset(part)
    assert len(ds) == 300 and not ds.complete
    with pytest.warns(UserWarning, match="original batch size"):  # a different batch size is overridden
        sampling.generate_to_dataset(model.net, part, 750, **{**kw, "batch_size": 64})
    i_full, c_full, _ = _read(full)
    i_part, c_part, ds = _read(part)
    assert ds.complete and len(ds) == 750
    assert i_full.tobytes() == i_part.tobytes()
    pd.testing.assert_frame_equal(c_full, c_part)
    assert c_full["component"].tolist() == [0, 2] * 375  # a cluster list is cycled
    # different settings are refused rather than mixed into the same dataset
    with pytest.raises(DatasetError, match="seed"):
        sampling.generate_to_dataset(model.net, part, 800, **{**kw, "seed": 4})
    # re-running a finished run is a no-op; a larger n extends it
    sampling.generate_to_dataset(model.net, part, 750, **kw)
    assert len(Dataset(part)) == 750


def test_uniform_weights_and_invalid_arguments(trained, tmp_path):
    _, _, model = trained
    spec = sampling.GenerationSpec(weights="uniform", seed=1)
    comps, z = sampling.sample_latents(sampling.gmm_arrays(model.net), 0, 3000, spec)
    np.testing.assert_allclose(np.bincount(comps, minlength=3) / 3000, 1 / 3, atol=0.04)
    # a slice of the stream equals the same rows of a longer draw
    c2, z2 = sampling.sample_latents(sampling.gmm_arrays(model.net), 700, 1300, spec)
    np.testing.assert_array_equal(c2, comps[700:1300])
    np.testing.assert_array_equal(z2, z[700:1300])
    with pytest.raises(ValueError, match="component must be in"):
        sampling.generate_to_dataset(model.net, tmp_path / "x", 10, components=[5], progress=False)
    with pytest.raises(ValueError, match="temperature"):
        sampling.generate_to_dataset(model.net, tmp_path / "x", 10, temperature=0, progress=False)


def test_png_and_fits_outputs(trained, tmp_path):
    tmp, _, model = trained
    from astropy.io import fits

    assert main(["generate", str(tmp / "run"), str(tmp_path / "g.png"), "--n", "20", "--seed", "2"]) == 0
    im = np.asarray(Image.open(tmp_path / "g.png"))
    # 4 rows x 5 columns of 16 px tiles enlarged 6 x (96 px), a 14 px caption under each, 2 px gaps
    assert im.shape == (4 * (96 + 18 + 2) - 2, 5 * (96 + 2) - 2)  # 18 px caption strips
    tile = im[:96, :96]
    assert (tile[::6, ::6] == tile[5::6, 5::6]).all()  # whole pixels repeated, never interpolated
    assert (im[97:110, :96] < 128).any()  # a caption was drawn
    assert main(["generate", str(tmp / "run"), str(tmp_path / "g.fits"), "--n", "50", "--seed", "2",
                 "--batch-size", "16", "--quiet"]) == 0
    ref = sampling.generate_to_dataset(model.net, tmp_path / "ref", 50, seed=2, batch_size=16, progress=False)
    imgs, cat, _ = _read(ref)
    with fits.open(tmp_path / "g.fits") as hdul:
        cube = hdul[0].data
        assert cube.shape == (50, 16, 16) and cube.dtype.kind == "f"
        # FITS rows run bottom-up (as ds9 shows them); the dataset's run top-down
        np.testing.assert_allclose(cube[:, ::-1], imgs[:, 0] / 255.0, atol=1e-6)
        table = hdul["CATALOG"].data
        np.testing.assert_array_equal(table["component"], cat["component"])
        np.testing.assert_allclose(table["z_3"], cat["z_3"])
        assert hdul[0].header["GENSEED"] == 2 and hdul[0].header["PRECISN"] == "float32"
        assert "train.seed" in hdul[0].header.comments["SEED"]  # SEED stays the weights' training seed
    assert main(["generate", str(tmp / "run"), str(tmp_path / "big.png"), "--n", "5000"]) == 2


def test_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """Peak RSS after each commit of one 18k-image run at 64 px (cheap decoder, in a subprocess): after a
    warm-up of 6k images the peak must stay flat. Holding the later 12k images would add 49 MB.
    (The 200k-image peak, under 2 GB, is measured by benchmarks/bench_generate.py --memory.)"""
    script = textwrap.dedent(f"""
        import resource
        from astrovader import AstroVaDEr, Config
        from astrovader.data import dataset
        from astrovader.sampling import generate_to_dataset
        cfg = Config.resolve("demo", overrides=["model.image_size=64", "model.encoder_filters=[4]",
            "model.encoder_kernels=[3]", "model.decoder_filters=[4]", "model.decoder_kernels=[3]",
            "model.latent_dim=4", "model.n_components=3", "train.device=cpu"])
        peaks = []
        commit = dataset.DatasetWriter.commit
        def recording_commit(self):
            commit(self)
            peaks.append((len(self), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
        dataset.DatasetWriter.commit = recording_commit
        generate_to_dataset(AstroVaDEr(cfg).net, {str(tmp_path / 'm')!r}, 18000, batch_size=500, commit_every=1000,
                            progress=False)
        print(dict(peaks)[6000], dict(peaks)[18000])
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    at_6k, at_18k = map(float, res.stdout.split())
    assert len(Dataset(tmp_path / "m")) == 18000
    assert at_18k - at_6k < 16, (at_6k, at_18k)


# ------------------------------------------------------------------------------------------------
# shortest route
# ------------------------------------------------------------------------------------------------
def _brute_force(dist: np.ndarray, closed: bool) -> float:
    K = len(dist)
    perms = ([(0, *p) for p in itertools.permutations(range(1, K))] if closed
             else itertools.permutations(range(K)))
    return min(latent_paths.route_length(dist, p, closed) for p in perms)


@pytest.mark.parametrize("closed", [True, False])
def test_held_karp_is_optimal_against_brute_force(closed):
    rng = np.random.default_rng(0)
    for K in range(1, 8):
        for _ in range(3):
            pts = rng.normal(size=(K, 5))
            route = latent_paths.shortest_route(pts, closed=closed)
            assert sorted(route) == list(range(K))
            dist = latent_paths._distances(pts)
            assert latent_paths.route_length(dist, route, closed) == pytest.approx(_brute_force(dist, closed))


def test_heuristic_route_above_twelve_points():
    rng = np.random.default_rng(1)
    pts = rng.uniform(size=(20, 2))
    dist = latent_paths._distances(pts)
    route = latent_paths.shortest_route(pts, closed=True)
    assert sorted(route) == list(range(20))
    # 2-opt leaves no improving reversal, and beats the plain visiting order by a wide margin
    assert latent_paths.route_length(dist, latent_paths._two_opt(dist, route, True), True) == pytest.approx(
        latent_paths.route_length(dist, route, True))
    assert latent_paths.route_length(dist, route, True) < 0.6 * latent_paths.route_length(dist, list(range(20)), True)


# ------------------------------------------------------------------------------------------------
# interpolation, traversal, deblending, figures
# ------------------------------------------------------------------------------------------------
def test_interpolate_and_traverse(trained):
    _, ds, model = trained
    lat = model.transform(ds)
    strip = model.interpolate(lat[0], lat[1], steps=5)
    assert strip.shape == (5, 1, 16, 16) and 0 <= strip.min() and strip.max() <= 1
    np.testing.assert_allclose(strip[[0, -1]], model.decode(lat[:2]), atol=1e-6)
    np.testing.assert_allclose(model.interpolate(ds.read(0, 1)[0], lat[1], steps=5), strip, atol=1e-5)
    trav = model.traverse(lat, steps=7)
    assert trav.shape == (4, 7, 1, 16, 16)
    mean_img = model.decode(lat.mean(0, keepdims=True))[0]
    for j in range(4):  # odd steps: the centre column is the mean galaxy, the ends the extremes
        np.testing.assert_allclose(trav[j, 3], mean_img, atol=1e-5)
        z = lat.mean(0)
        z[j] = lat[:, j].max()
        np.testing.assert_allclose(trav[j, -1], model.decode(z[None])[0], atol=1e-5)


def test_deblend_picks_the_most_similar_galaxy_outside_the_companion(trained):
    _, ds, model = trained
    summary = latent_paths.latent_summary(model.net, ds)
    imgs = ds.load().astype(np.float32) / 255
    H = imgs.shape[-1]
    mask = np.zeros((H, H), bool)
    mask[:, H // 2:] = True  # pretend the right half holds a companion: only the left half is compared
    res = latent_paths.deblend(model.net, summary, ds, [0], steps=4, n_examples=2, companion_mask=lambda im: mask)
    members = np.flatnonzero(summary.labels == 0)
    expected = members[np.argsort(-summary.probs[members, 0], kind="stable")][:2]
    assert [r["galaxy"] for r in res] == list(expected)
    for r in res:
        g = r["galaxy"]
        mse = ((imgs[:, :, :, :H // 2] - imgs[g, :, :, :H // 2]) ** 2).reshape(len(imgs), -1).mean(1)
        mse[g] = np.inf
        assert r["partner"] == int(np.argmin(mse)) and r["component"] == 0
        assert r["strip"].shape == (5, 1, 16, 16)
    # a companion-free test rejects candidates: the nearest accepted one is taken
    first = res[0]["partner"]
    again = latent_paths.deblend(model.net, summary, ds, [0], galaxies=[res[0]["galaxy"]],
                                 companion_mask=lambda im: mask, companion_free=lambda x: np.arange(len(x)) > 0)[0]
    assert again["partner"] != first
    with pytest.raises(ValueError, match="companion components"):
        latent_paths.deblend(model.net, summary, ds, [7])


def test_explore_cli_writes_all_figures(trained, tmp_path, capsys):
    tmp, ds, model = trained
    assert main(["predict", str(tmp / "run"), str(ds.path), str(tmp_path / "p.parquet"), "--quiet"]) == 0
    out = tmp_path / "fig"
    assert main(["explore", str(tmp / "run"), str(ds.path), str(out), "--steps", "4", "--quiet",
                 "--predictions", str(tmp_path / "p.parquet"), "--companion", "0"]) == 0
    printed = capsys.readouterr().out
    for name in ("gallery", "interpolation", "traversal", "deblending", "interpolation_strip"):
        img = np.asarray(Image.open(out / f"{name}.png").convert("L"))
        assert img.shape[0] > 40 and img.std() > 10, name  # not blank
        assert name + ".png" in printed
    gif = Image.open(out / "interpolation.gif")
    assert gif.n_frames == 3 * 4 + 1 - 1  # closed tour of 3 legs x 4 steps; the loop's end is the start
    figs = generation_figures(model.net, ds, tmp_path / "api", steps=3, n_per_component=2, companion_components=[1])
    assert [p.name for _, p in figs] == ["gallery.png", "interpolation.png", "traversal.png", "deblending.png"]
    # blobs have no companions: no component is flagged, and no deblending figure pretends otherwise
    figs = generation_figures(model.net, ds, tmp_path / "api2", steps=3, n_per_component=2)
    assert [p.name for _, p in figs] == ["gallery.png", "interpolation.png", "traversal.png"]
    assert all(isinstance(t, str) and t for t, _ in figs)


# ------------------------------------------------------------------------------------------------
# one sampler
# ------------------------------------------------------------------------------------------------
def test_api_sample_gallery_and_cli_generate_make_the_same_images(trained, tmp_path):
    tmp, _, model = trained
    assert main(["generate", str(tmp / "run"), str(tmp_path / "cli"), "--n", "40", "--seed", "7", "--quiet",
                 "--no-consistency"]) == 0
    written = Dataset(tmp_path / "cli")
    imgs, comps = model.sample(40, seed=7)
    np.testing.assert_array_equal(imgs, written.load() / np.float32(255))
    np.testing.assert_array_equal(comps, written.catalog["component"].to_numpy())
    # the gallery shows what `generate --component 0 1 2` writes, one row per component
    assert main(["generate", str(tmp / "run"), str(tmp_path / "cyc"), "--n", "12", "--seed", "2", "--quiet",
                 "--component", "0", "1", "2", "--no-consistency"]) == 0
    grid, components = sampling.gallery(model.net, 4, seed=2)
    cyc = Dataset(tmp_path / "cyc").load() / np.float32(255)
    assert grid.shape == (3, 4, 1, 16, 16) and components == [0, 1, 2]
    for k in range(3):
        np.testing.assert_array_equal(grid[k], cyc[k::3])
    # the old option name still works, and help never shows it
    assert main(["generate", str(tmp / "run"), str(tmp_path / "old"), "--n", "12", "--seed", "2", "--quiet",
                 "--cluster", "0", "1", "2", "--no-consistency"]) == 0
    np.testing.assert_array_equal(Dataset(tmp_path / "old").load(), Dataset(tmp_path / "cyc").load())
