"""The built-in demo end to end, exactly as `astrovader demo` runs it, then describe and deblending (419 s in CI on
2 CPU cores)."""

import json

import pandas as pd

from astrovader.demo import run_demo


def test_demo_scores_every_method_on_held_out_galaxies(tmp_path):
    summary = run_demo(tmp_path / "demo", progress=False)
    vade, base = summary["astrovader"], summary["pca_gmm_baseline"]
    bright, ceiling = summary["brightness_gmm_baseline"], summary["supervised_ceiling"]
    # the simulator overlaps the classes in flux and size: two brightness numbers per stamp do not separate them,
    # while a supervised CNN on the same pixels does. Every method's scores are printed and saved, whichever wins
    # (on this simulator the VaDE does not yet beat PCA + GMM: benchmarks/RESULTS.md, "The demo made honest")
    assert bright["accuracy"] < 0.6 and ceiling["cnn"]["accuracy"] > 0.95 and ceiling["knn_pixels"]["accuracy"] > 0.75
    for s in (vade, base, bright):
        assert 0.3 <= s["accuracy"] <= s["purity"] + 1e-9 and 0 <= s["nmi"] < ceiling["cnn"]["nmi"]
    assert summary["epochs"] == 100
    # every simulated galaxy has exactly one prediction row, and every component is used
    pred = pd.read_parquet(tmp_path / "demo" / "predictions.parquet")
    assert len(pred) == summary["n_images"] == 8000 and pred["id"].is_unique
    assert set(pred["component"]) == {0, 1, 2}
    saved = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert saved["astrovader"]["accuracy"] == vade["accuracy"]
    # scored on the held-out test galaxies the demo split off before training
    assert summary["n_test"] == 1312 and "held out" in summary["scored_on"]
    _the_companion_component_is_flagged_and_deblended(tmp_path / "demo")


def _the_companion_component_is_flagged_and_deblended(demo):
    """`describe` agrees with the simulator's truth about companions: the component whose members most often have
    one is flagged as grouped by companions when nearly all of them do, and not when most do not; deblending from
    it, asked for by name, removes at least half of the companions' light while the central galaxies change by
    < 20% (issue 18's bar)."""
    from astrovader.analysis.describe import DescribeSettings, describe_run
    from astrovader.benchmark import deblending_on_simulation
    from astrovader.data.dataset import Dataset

    quick = DescribeSettings(max_members=200, n_detailed=5)
    desc = describe_run(demo / "run", demo / "data", demo / "components.csv", split="test", settings=quick,
                        progress=False)
    cat = Dataset(demo / "data").catalog
    pred = pd.read_parquet(demo / "predictions.parquet")
    truth = cat["has_companion"].groupby(pred["component"]).mean()
    comp = int(truth.idxmax())  # the component whose members most often have a companion, by the truth
    if truth[comp] >= 0.9:
        assert comp in desc.companion_components and comp in desc.non_morphological
    elif truth[comp] < 0.5:
        assert comp not in desc.companion_components and comp not in desc.non_morphological
    assert set(desc.companion_components) <= {c for c in truth.index if truth[c] >= 0.5}
    res = deblending_on_simulation(demo / "run", demo / "data", n=24, companion_components=[comp])
    assert res["deblended"]["companion_removed_mean"] >= 0.5
    assert res["deblended"]["central_change_mean"] < 0.2
