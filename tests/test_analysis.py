"""Analysis metrics against hand computations, choose-k on data with a known K, and the report end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import calinski_harabasz_score

from astrovader.analysis.choose_k import choose_k
from astrovader.analysis.metrics import (
    calinski_harabasz,
    gz_vote_classes,
    hungarian_accuracy,
    occupancy_table,
    overlap_matrix,
    purity,
    secondary_labels,
    simplified_silhouette,
    simplified_silhouette_samples,
)
from astrovader.cli import main

from .conftest import blob_images

TINY = ["model.image_size=16", "model.encoder_filters=[4,4]", "model.encoder_kernels=[3,3]",
        "model.decoder_filters=[4,4]", "model.decoder_kernels=[3,3]", "model.latent_dim=4",
        "model.n_components=3", "train.batch_size=32", "train.gamma_epochs=2", "train.gmm_init_batches=4",
        "train.anneal_epochs=1", "train.static_epochs=1", "train.periods=1", "train.device=cpu"]

_CACHE: dict[str, object] = {}


def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny trained run on blobs with true classes, Galaxy Zoo-style vote fractions and a split column.

    Memoised at module level so that both analysis test files share one training (and one report)."""
    if "run" not in _CACHE:
        from astrovader import AstroVaDEr, Config
        from astrovader.data.dataset import write_dataset

        tmp = tmp_path_factory.mktemp("analysis")
        imgs, labels = blob_images(240, size=16, seed=2)
        rng = np.random.default_rng(0)
        smooth = np.where(labels == 0, 0.8, 0.2) + rng.uniform(-0.1, 0.1, len(labels))
        cat = pd.DataFrame({"id": np.arange(5000, 5240), "true_class": labels,
                            "split": np.where(np.arange(240) % 4 == 0, "test", "train"),
                            "smooth_debiased": smooth, "featured_debiased": 1 - smooth,
                            "edge_on_debiased": np.where(labels == 2, 0.9, 0.1), "total_votes": 30})
        ds = write_dataset(tmp / "ds", imgs, cat)
        AstroVaDEr(Config.resolve("demo", overrides=TINY)).fit(ds, run_dir=tmp / "run", progress=False)
        _CACHE["run"] = (tmp / "run", tmp / "ds")
    return _CACHE["run"]  # type: ignore[return-value]


def tiny_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """report.html of the tiny run (non-morphological component 2), built once per session."""
    if "report" not in _CACHE:
        from astrovader.analysis.describe import DescribeSettings
        from astrovader.analysis.report import make_report

        run, ds = tiny_run(tmp_path_factory)
        out = tmp_path_factory.mktemp("report")
        _CACHE["report"] = make_report(run, ds, out, non_morphological=(2,), progress=False,
                                       describe=DescribeSettings(n_detailed=8, max_members=40))
    return _CACHE["report"]  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# metrics on hand-made cases
# --------------------------------------------------------------------------------------------------
def test_simplified_silhouette_by_hand():
    # cluster 0 = {0, 2} (centroid 1), cluster 1 = {10} (centroid 10)
    x = np.array([[0.0], [2.0], [10.0]])
    lab = np.array([0, 0, 1])
    s = simplified_silhouette_samples(x, lab)
    np.testing.assert_allclose(s, [(10 - 1) / 10, (8 - 1) / 8, (9 - 0) / 9])
    assert simplified_silhouette(x, lab) == pytest.approx(np.mean([0.9, 7 / 8, 1.0]))
    # 2-D, three clusters: nearest *other* centroid is used
    x2 = np.array([[0.0, 0.0], [0.0, 2.0], [3.0, 1.0], [10.0, 1.0]])
    lab2 = np.array([0, 0, 1, 2])
    a, b = 1.0, np.sqrt(10)  # point (0,0): own centroid (0,1) at distance 1; nearest other (3,1) at sqrt(10)
    assert simplified_silhouette_samples(x2, lab2)[0] == pytest.approx((b - a) / b)
    assert (simplified_silhouette_samples(x, np.zeros(3)) == 0).all()  # one cluster: nothing to compare


def test_calinski_harabasz_matches_sklearn():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 3))
    lab = rng.integers(0, 3, 60)
    assert calinski_harabasz(x, lab) == pytest.approx(calinski_harabasz_score(x, lab))
    assert np.isnan(calinski_harabasz(x, np.zeros(60)))


def test_hungarian_accuracy_and_purity():
    true = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([1, 1, 0, 0, 2, 0])
    assert hungarian_accuracy(true, pred) == pytest.approx(5 / 6)
    assert purity(true, pred) == pytest.approx(5 / 6)
    assert hungarian_accuracy(true, np.zeros(6)) == pytest.approx(2 / 6)


PROBS = np.array([[0.70, 0.20, 0.10],
                  [0.60, 0.35, 0.05],
                  [0.05, 0.90, 0.05],
                  [0.30, 0.30, 0.40],
                  [0.92, 0.04, 0.04]])


def test_occupancy_counts_at_cuts():
    t = occupancy_table(PROBS, cuts=(0.1, 0.5, 0.9))
    assert t["component"].tolist() == ["0", "1", "2", "all"]
    assert t["n_max"].tolist() == [3, 1, 1, 5]
    assert t["n_p>0.1"].tolist() == [4, 4, 1, 5]  # 0.1 is not > 0.1
    assert t["n_p>0.5"].tolist() == [3, 1, 0, 4]
    assert t["n_p>0.9"].tolist() == [1, 0, 0, 1]  # 0.90 is not > 0.9 either
    lat = np.array([[0.0], [1.0], [5.0], [9.0], [2.0]])
    t2 = occupancy_table(PROBS, cuts=(0.5,), latents=lat)
    s = simplified_silhouette_samples(lat, PROBS.argmax(1))
    assert t2["silhouette"].iloc[0] == pytest.approx(s[[0, 1, 4]].mean())
    assert t2["silhouette"].iloc[-1] == pytest.approx(s.mean())


def test_overlap_matrix_rows():
    m = overlap_matrix(PROBS)
    np.testing.assert_allclose(m.sum(1), 1)
    np.testing.assert_allclose(m[0], PROBS[[0, 1, 4]].mean(0))
    np.testing.assert_allclose(m[0], [(0.70 + 0.60 + 0.92) / 3, (0.20 + 0.35 + 0.04) / 3, (0.10 + 0.05 + 0.04) / 3])
    np.testing.assert_allclose(m[1], PROBS[2])
    np.testing.assert_allclose(m[2], PROBS[3])
    empty = overlap_matrix(PROBS[[0, 1]])  # components 1 and 2 have no members
    assert np.isnan(empty[1]).all() and not np.isnan(empty[0]).any()


def test_secondary_labels_renormalise():
    sec = secondary_labels(PROBS, non_morphological=[0])
    assert sec["primary"].tolist() == [0, 0, 1, 2, 0]
    assert sec["secondary"].tolist() == [1, 1, 1, 2, 1]
    assert sec["secondary_prob"].iloc[0] == pytest.approx(0.2 / 0.3)
    assert sec["secondary_prob"].iloc[4] == pytest.approx(0.5)  # a tie resolves to the first
    with pytest.raises(ValueError):
        secondary_labels(PROBS, [0, 1, 2])
    with pytest.raises(ValueError):
        secondary_labels(PROBS, [3])


def test_gz_vote_classes_cuts():
    cat = pd.DataFrame({"smooth_debiased": [0.8, 0.2, 0.2, 0.5], "featured_debiased": [0.2, 0.8, 0.8, 0.5],
                        "edge_on_debiased": [0.0, 0.9, 0.1, 0.9], "total_votes": [30, 30, 30, 10]})
    gz = gz_vote_classes(cat)
    assert gz["smooth"].tolist() == [True, False, False, False]  # the last has too few votes
    assert gz["featured"].tolist() == [False, True, True, False]
    assert gz["edge_on"].tolist() == [False, True, False, False]
    assert gz["not_edge_on"].tolist() == [False, False, True, False]
    assert gz_vote_classes(cat, {"total_votes": 5})["smooth"].tolist() == [True, False, False, True]
    assert gz_vote_classes(pd.DataFrame({"x": [1]})) is None


# --------------------------------------------------------------------------------------------------
# choosing K
# --------------------------------------------------------------------------------------------------
def test_choose_k_recovers_known_number_of_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 8, (4, 6))
    x = np.concatenate([rng.normal(c, 1.0, (150, 6)) for c in centres])
    res = choose_k(x, max_components=10, repeats=3, batch=400, seed=0)
    assert res.consensus == 4
    assert res.weights.shape == (3, 10)
    assert sum(res.distribution().values()) == 3


# --------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------
def test_make_report_writes_everything(tmp_path_factory):
    report = tiny_report(tmp_path_factory)
    out = report.parent
    for name in ("recon_random", "recon_best", "recon_worst", "cluster_stats_table", "overlap", "members_top",
                 "members_random", "secondary", "latent_map", "latent_histograms", "label_counts", "label_fractions",
                 "gz_smooth_featured", "gz_edge_on", "history"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000, name
    for name in ("cluster_stats.csv", "cluster_stats.html", "overlap.csv", "secondary_labels.csv",
                 "secondary_counts.csv", "label_counts.csv", "gz_smooth_featured.csv", "gz_edge_on.csv"):
        assert (out / "tables" / name).is_file(), name
    stats = pd.read_csv(out / "tables" / "cluster_stats.csv")
    assert list(stats.columns) == ["component", "n_max", "n_p>0.1", "n_p>0.5", "n_p>0.9", "silhouette"]
    # the dataset has a split column with test rows: the report uses them, and says so at the top
    assert stats["n_max"].iloc[-1] == 60 and stats["n_max"].iloc[:-1].sum() == 60
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_objects"] == 60 and metrics["split"] == "test" and metrics["label_column"] == "true_class"
    assert 0 <= metrics["label_accuracy"] <= 1 and "calinski_harabasz" in metrics
    assert metrics["provenance"]["NCOMP"] == "3" and len(metrics["provenance"]["WEIGHTS"]) == 16
    pred = pd.read_parquet(out / "predictions.parquet")
    assert len(pred) == 60 and pred["id"].iloc[0] == 5000 and "component" in pred.columns
    text = report.read_text()
    assert text.count("data:image/png;base64,") >= 15
    assert "Component statistics" in text and "[model]" in text and 'src="http' not in text
    banner = text[text.index('class="banner"'):][:300]
    assert "test" in banner and "held out from training" in banner and "60 galaxies" in banner
    # metric names in words, what a good value is, the version and the next commands
    assert "normalised mutual information" in text and "1 is perfect" in text and "astrovader 0." in text
    assert f"trained with train.seed = {metrics['provenance']['SEED']})" in text  # which weights, which seed
    assert "astrovader describe" in text and "astrovader predict" in text
    # every component is described with numbers and a sentence
    desc = pd.read_csv(out / "tables" / "components.csv")
    used = desc["n_members"] > 0
    assert list(desc["component"]) == [0, 1, 2] and used.any() and desc.loc[used, "r50"].notna().all()
    assert desc["sentence"].str.len().min() > 20 and desc["n_members"].sum() == 60
    assert text.count("<li><b>Component ") == 6  # once in the descriptions, once in the closing summary
    # the synthetic galaxies measured against the 60 held-out real ones (benchmark realism's measures)
    assert 'id="realism"' in text and "Morphology, synthetic against real" in text
    assert 0 <= metrics["realism_classifier_accuracy"] <= 1 and 0 <= metrics["realism_memorised_share"] <= 1
    realism = json.loads((out / "realism" / "realism.json").read_text())
    assert realism["n_real"] == 60 and realism["noise"]["sigma"] > 0 and realism["split"] == "test"
    assert metrics["realism_worst_w1_ratio"] == pytest.approx(max(p["w1_ratio"] for p in realism["parameters"]))


def test_report_cli_split_and_errors(tmp_path_factory, tmp_path, capsys):
    run, ds = tiny_run(tmp_path_factory)
    # argument errors are reported in one line with exit code 2
    with pytest.raises(SystemExit) as exc:
        main(["report", str(run), str(ds), str(tmp_path / "r"), "--cuts", "0.5,2"])
    assert exc.value.code == 2
    assert main(["report", str(run), str(ds), str(tmp_path / "r"), "--non-morphological", "7", "--quiet"]) == 2
    assert main(["report", str(run), str(ds), str(tmp_path / "r"), "--split", "nosuch", "--quiet"]) == 2
    assert main(["report", str(run), str(ds), str(tmp_path / "r"), "--label-column", "nosuch", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and "0..2" in err


def test_report_without_a_split_says_all_rows_prominently(tmp_path_factory, tmp_path):
    from astrovader.analysis.describe import DescribeSettings
    from astrovader.analysis.report import make_report
    from astrovader.data.dataset import Dataset, write_dataset

    run, ds = tiny_run(tmp_path_factory)
    src = Dataset(ds)
    nosplit = write_dataset(tmp_path / "nosplit", src.load()[:80], src.catalog.iloc[:80].drop(columns="split"))
    quick = DescribeSettings(n_core=10, max_members=20, n_detailed=2)
    page = make_report(run, nosplit, tmp_path / "r", progress=False, describe=quick, vector=("svg",)).read_text()
    banner = page[page.index('class="banner"'):][:400]
    assert "all rows" in banner and "no split column" in banner and "trained on" in banner
    assert "astrovader split" in page  # the first next step: hold out test galaxies
    assert "Not measured: the comparison needs at least 20 real galaxies the model" in page
    assert (tmp_path / "r" / "figures" / "overlap.svg").read_text().lstrip().startswith("<?xml")


def test_choose_k_cli(tmp_path_factory, tmp_path, capsys):
    run, ds = tiny_run(tmp_path_factory)
    out = tmp_path / "k.png"
    assert main(["choose-k", str(run), str(ds), "--repeats", "2", "--batch", "100", "--max-components", "5",
                 "--split", "test", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "consensus K =" in text and "over 2 mini-batches of 60" in text
    assert out.stat().st_size > 1000


def test_undefined_metrics_are_said_in_words():
    from astrovader.analysis.report import _fmt_metric

    assert _fmt_metric(float("nan")).startswith("undefined") and _fmt_metric(0.12345) == "0.1235"


def test_explore_announces_every_step_and_describes_once(tmp_path_factory, tmp_path, capsys, monkeypatch):
    """`explore` says what it is doing at every step that can take seconds, and measures the components once for
    the deblending choice and the page (it used to measure them twice)."""
    from astrovader.analysis import describe

    run, ds = tiny_run(tmp_path_factory)
    calls = []
    real = describe.describe_components
    monkeypatch.setattr(describe, "describe_components", lambda *a, **k: calls.append(1) or real(*a, **k))
    import astrovader.analysis.explore_figures as ef
    import astrovader.analysis.explorer as ex

    monkeypatch.setattr(ex, "describe_components", describe.describe_components)
    monkeypatch.setattr(ef, "describe_components", describe.describe_components)
    assert main(["explore", str(run), str(ds), str(tmp_path / "out"), "--steps", "3", "--traverse-steps", "3",
                 "--n-per-cluster", "2"]) == 0
    err = capsys.readouterr().err
    steps = [line for line in err.splitlines() if line.startswith("[explore] ")]
    assert [s.split(" (")[0] for s in steps] == [
        "[explore] describing the components", "[explore] synthetic galaxies per component",
        "[explore] shortest-route interpolation", "[explore] latent traversal", "[explore] latent map",
        "[explore] reconstructions and thumbnails", "[explore] the page: map, component panels, filters"]
    assert len(calls) == 1


def test_latent_map_keeps_groups_apart_and_is_seeded():
    from sklearn.neighbors import KNeighborsClassifier

    from astrovader.analysis.latent_map import latent_map

    rng = np.random.default_rng(0)
    mu = np.concatenate([rng.normal(0, 1, (150, 6)), rng.normal(6, 1, (150, 6))]).astype(np.float32)
    truth = np.repeat([0, 1], 150)
    xy = latent_map(mu, seed=3)
    assert xy.shape == (300, 2) and xy.dtype == np.float32
    # the two groups stay apart on the map: each point's map neighbours are from its own group
    assert KNeighborsClassifier(5).fit(xy, truth).score(xy, truth) == 1.0
    np.testing.assert_array_equal(latent_map(mu, seed=3), xy)
    assert latent_map(mu[:10]).shape == (10, 2)  # PCA below 20 galaxies
