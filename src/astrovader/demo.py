"""The built-in end-to-end demonstration: simulate galaxies, train, predict, score against the truth."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrovader.analysis.metrics import clustering_scores
from astrovader.baselines import brightness_gmm_baseline, pca_gmm_baseline
from astrovader.benchmark.ceilings import cnn_classifier, knn_pixels
from astrovader.config import Config
from astrovader.data.dataset import Dataset, atomic_write_json, is_dataset
from astrovader.data.selection import apply_split
from astrovader.errors import InputError
from astrovader.estimator import AstroVaDEr
from astrovader.runs import CHECKPOINT
from astrovader.train import train

DEMO_SPLIT = (0.75, 0.10, 0.15)  # train, validation, test


def run_demo(out: str | Path = "astrovader-demo", n: int = 8000, seed: int = 0, config: Config | None = None,
             companion_fraction: float = 0.2, progress: bool = True) -> dict[str, Any]:
    """Simulate ``n`` galaxies (3 classes), split them 75/10/15 into train/validation/test, train the ``demo``
    preset, write predictions and score them on the held-out test galaxies.

    Everything goes under ``out``; re-running after an interruption reuses the data and resumes training."""
    from astrovader.data.simulate import CLASS_NAMES, simulate

    out = Path(out)
    cfg = config or Config.preset("demo")
    cfg.train.seed = seed
    cfg.model.n_components = len(CLASS_NAMES)
    smallest = math.ceil(cfg.train.batch_size / DEMO_SPLIT[0])
    if n < smallest:  # checked before anything is written, so a bad --n leaves no half-made demo behind
        raise InputError(f"the demo needs at least {smallest} galaxies (one training batch of "
                         f"{cfg.train.batch_size} after the validation and test shares), got --n {n}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data_dir = out / "data"
    if is_dataset(data_dir) and Dataset(data_dir).complete:
        ds = Dataset(data_dir)
        print(f"[1/3] using the simulated galaxies already in {data_dir} ({len(ds)} images)")
    else:
        print(f"[1/3] simulating {n} galaxies ({', '.join(CLASS_NAMES)}) at {cfg.model.image_size} px -> {data_dir}")
        if data_dir.exists():
            import shutil

            shutil.rmtree(data_dir)  # an interrupted simulation: start it again, it is deterministic
        ds = simulate(data_dir, n=n, size=cfg.model.image_size, seed=seed,
                      companion_fraction=companion_fraction, progress=progress)
    if "split" not in ds.catalog.columns:  # held out from training, so the scores below are on unseen galaxies
        apply_split(data_dir, fractions=DEMO_SPLIT, seed=seed, batch_size=cfg.train.batch_size)
        ds = Dataset(data_dir)
    t_sim = time.perf_counter() - t0

    run_dir = out / "run"
    print(f"[2/3] training the demo model ({cfg.train.epochs} epochs, s3VDC schedule) -> {run_dir}")
    t1 = time.perf_counter()
    result = train(cfg, ds, run_dir, resume=(run_dir / CHECKPOINT).exists(), progress=progress)
    t_train = time.perf_counter() - t1

    print(f"[3/3] predicting -> {out / 'predictions.parquet'}")
    model = AstroVaDEr.load(run_dir)
    model.predict_catalog(ds, out / "predictions.parquet", progress=progress, overwrite=True)
    pred = pd.read_parquet(out / "predictions.parquet")
    test, train_rows = ds.split_indices("test"), ds.split_indices("train")
    truth = ds.catalog["true_class"].to_numpy()[test]
    scores = clustering_scores(truth, pred["component"].to_numpy()[test])
    images = ds.load()
    base = clustering_scores(truth, pca_gmm_baseline(images[train_rows], cfg.model.n_components, seed,
                                                     apply_to=images[test]))
    brightness = clustering_scores(truth, brightness_gmm_baseline(images[train_rows], cfg.model.n_components, seed,
                                                                  apply_to=images[test]))
    labels = ds.catalog["true_class"].to_numpy()
    ceiling = {name: clustering_scores(truth, fit(images[train_rows], labels[train_rows], images[test], seed))
               for name, fit in (("cnn", _demo_cnn), ("knn_pixels", knn_pixels))}
    summary = {
        "n_images": len(ds), "n_test": len(test), "n_components": cfg.model.n_components, "epochs": len(result.history),
        "scored_on": "test split (held out from training)", "astrovader": scores, "pca_gmm_baseline": base,
        "brightness_gmm_baseline": brightness, "supervised_ceiling": ceiling,
        "seconds": {"simulate": t_sim, "train": t_train, "total": time.perf_counter() - t0},
        "component_sizes": pred["component"].value_counts().sort_index().to_dict(),
    }
    atomic_write_json(out / "metrics.json", summary)
    print()
    print(f"Clustering of the {len(test):,} held-out test galaxies (the model and the baseline were fitted on the "
          f"{len(train_rows):,} training galaxies) into K = {cfg.model.n_components} components, "
          "Hungarian-matched to the true classes:")
    print(f"  {'method':<38}{'accuracy':>10}{'NMI':>8}{'ARI':>8}{'purity':>8}")
    rows = (("astrovader (VaDE)", scores), ("PCA(20) + GMM", base),
            ("brightness only (flux, centre) + GMM", brightness), ("-- supervised ceiling: CNN", ceiling["cnn"]),
            ("-- supervised ceiling: kNN pixels", ceiling["knn_pixels"]))
    for name, s in rows:
        print(f"  {name:<38}{s['accuracy']:>10.3f}{s['nmi']:>8.3f}{s['ari']:>8.3f}{s['purity']:>8.3f}")
    print("  (accuracy, purity: share of galaxies in their component's majority class; NMI, ARI: agreement with "
          "the true classes, 1 is perfect, 0 chance. The brightness-only GMM sees two numbers per stamp and no "
          "shape; the supervised ceiling was fitted with the true classes of the training galaxies)")
    print(f"Total time {summary['seconds']['total']:.0f} s; outputs in {out}/ (metrics.json, predictions.parquet, "
          "run/, data/)")
    print("\nNext:")
    for cmd, what in ((f"astrovader describe {out}/run {out}/data {out}/components.csv --split test",
                       "what each component is, in numbers and words"),
                      (f"astrovader report {out}/run {out}/data {out}/report --split test",
                       "the paper's analyses as one HTML page"),
                      (f"astrovader explore {out}/run {out}/data {out}/figures",
                       "synthetic galaxies, interpolation, traversal, deblending"),
                      (f"astrovader generate {out}/run {out}/synthetic.png --n 64 --seed 0", "a grid of new galaxies")):
        print(f"  {cmd}\n      {what}")
    return summary


def _demo_cnn(images: np.ndarray, labels: np.ndarray, apply_to: np.ndarray, seed: int) -> np.ndarray:
    # fewer epochs than the benchmark's: the demo runs in minutes
    return cnn_classifier(images, labels, apply_to, seed, epochs=8)
