"""The built-in demo end to end, exactly as `astrovader demo` runs it (about 3 minutes on 2 CPU cores)."""

import json

import pandas as pd

from astrovader.demo import run_demo


def test_demo_beats_pca_gmm_baseline(tmp_path):
    summary = run_demo(tmp_path / "demo", progress=False)
    vade, base = summary["astrovader"], summary["pca_gmm_baseline"]
    assert vade["accuracy"] >= 0.8
    assert vade["accuracy"] > base["accuracy"] and vade["nmi"] > base["nmi"]
    assert summary["epochs"] == 100
    # every simulated galaxy has exactly one prediction row, and every component is used
    pred = pd.read_parquet(tmp_path / "demo" / "predictions.parquet")
    assert len(pred) == summary["n_images"] == 8000 and pred["id"].is_unique
    assert set(pred["component"]) == {0, 1, 2}
    saved = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert saved["astrovader"]["accuracy"] == vade["accuracy"]
