"""End-to-end clustering benchmarks with baselines: can the clustering be trusted?

``run_benchmark("mnist" | "gz1" | "simulated", ...)`` trains AstroVaDEr over several seeds on images with
known classes and scores every run the same way (Hungarian accuracy, NMI, ARI, purity), next to the baselines of
:mod:`astrovader.baselines` trained on the very same images in the same run.

A mean score alone hides the failures people actually hit, so every run also records the spread over seeds,
the worst seed, whether anything went NaN, and how many mixture components ended up with no members.
Per-seed results are JSON files; a re-run with the same settings skips the seeds already done, so a killed
benchmark continues where it stopped.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from astrovader.baselines import (
    BASELINES,
    METRICS,
    Task,
    encode_all,
    knn_accuracy,
    linear_probe_accuracy,
    neighbour_agreement,
    run_baseline,
    score,
)
from astrovader.benchmark.ceilings import CEILING_NAMES, CEILINGS, run_ceiling
from astrovader.benchmark.deblending import deblending_on_simulation
from astrovader.benchmark.tasks import (
    GZ1_CLASS_NAMES,
    GZ1_CLASSES,
    GZ1_CROP,
    GZ1_DEROTATE,
    GZ1_FLUX_NORM,
    HELD_OUT,
    SIM_SUITE,
    VADE_MNIST_ACCURACY,
    SimVariant,
    apply_overrides,
    gz1_config,
    gz1_stamps,
    gz1_tasks,
    gz2_kaggle_tasks,
    mnist_tasks,
    scale_epochs,
    sim_suite_config,
    sim_suite_tasks,
    simulated_tasks,
)
from astrovader.config import Config
from astrovader.data.dataset import Dataset, atomic_write_json, is_dataset, write_dataset
from astrovader.errors import InputError
from astrovader.inference import infer
from astrovader.train import TrainingDiverged, train

if TYPE_CHECKING:
    from astrovader.data.stamps import Crop

__all__ = [
    "BENCHMARKS", "CEILINGS", "DATA_FOLDERS", "deblending_on_simulation", "format_summary", "resolve_data",
    "run_astrovader",
    "run_benchmark", "summarise", "GZ1_CLASS_NAMES", "GZ1_CLASSES", "GZ1_CROP", "GZ1_DEROTATE", "GZ1_FLUX_NORM",
    "HELD_OUT", "SIM_SUITE", "VADE_MNIST_ACCURACY", "SimVariant", "apply_overrides", "gz1_config", "gz1_stamps",
    "gz1_tasks", "gz2_kaggle_tasks", "mnist_tasks", "scale_epochs", "sim_suite_config", "sim_suite_tasks",
    "simulated_tasks",
]

BENCHMARKS = ("mnist", "gz1", "gz2-kaggle", "simulated", "sim-suite")


# --------------------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------------------
def run_astrovader(task: Task, cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Train with the s3VDC schedule; score the GMM right after its initialisation and at the end.

    Training stops after gamma-training (plus GMM init) and is resumed, which on CPU reproduces an
    uninterrupted run exactly; the extra score shows how much of the final accuracy the initialisation
    already had, the main question when tuning. With ``train.restarts`` > 1 it is the first candidate's."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    k = cfg.model.n_components
    images, labels = task.images[task.eval_index], task.labels[task.eval_index]  # scored where nothing was fitted
    t0 = time.perf_counter()
    result: dict[str, Any] = {}
    try:
        res = train(cfg, task.dataset, run_dir, progress=False, stop_after_epoch=cfg.train.gamma_epochs - 1)
        enc = encode_all(res.net, images)
        finite = bool(np.isfinite(enc["mu"]).all() and np.isfinite(enc["probs"]).all())
        result["at_init"] = {m: v for m, v in score(labels, enc["probs"].argmax(1), k, finite).items()
                             if m in (*METRICS, "empty_components")}
        if cfg.train.epochs > cfg.train.gamma_epochs:
            res = train(cfg, task.dataset, run_dir, resume=True, progress=False)
        enc = infer(res.net, images).as_dict()
        finite = all(np.isfinite(v).all() for v in enc.values()) and all(
            math.isfinite(r[key]) for r in res.history for key in ("train_total", "train_recon"))
        result.update(score(labels, enc["probs"].argmax(1), k, finite))
        result["final_recon"] = float(res.history[-1]["train_recon"])
        result["recon_mse"] = float(enc["recon_mse"].mean())  # of the scored images' decoded latent means
        if task.knn:
            result["knn_accuracy"] = knn_accuracy(enc["mu"], labels, cfg.train.seed)
            result["linear_probe"] = linear_probe_accuracy(enc["mu"], labels, cfg.train.seed)
            result["neighbour_agreement"] = neighbour_agreement(enc["mu"], labels, cfg.train.scan_neighbours)
    except TrainingDiverged as exc:
        result.update({m: float("nan") for m in METRICS})
        result.update(nan=True, ok=False, empty_components=None, error=str(exc))
    result["seconds"] = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------------
def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, std (ddof 0) and worst value of each metric per method over seeds, and the health flags."""
    methods = list(per_seed[0]["methods"]) if per_seed else []
    out: dict[str, Any] = {}
    for m in methods:
        runs = [r["methods"][m] for r in per_seed if m in r["methods"]]
        row: dict[str, Any] = {"runs": len(runs)}
        for key in (*METRICS, "knn_accuracy", "linear_probe", "neighbour_agreement", "recon_mse"):
            vals = np.array([r[key] for r in runs if key in r], dtype=float)
            if len(vals):
                row[key] = {"mean": float(vals.mean()), "std": float(vals.std()), "min": float(vals.min()),
                            "max": float(vals.max())}
        row["any_nan"] = any(r.get("nan", False) for r in runs)
        row["runs_with_empty_components"] = sum(1 for r in runs if (r.get("empty_components") or 0) > 0)
        row["all_ok"] = all(r.get("ok", False) for r in runs)
        out[m] = row
    return out


# the folder each real-data task expects (the data README)
DATA_FOLDERS = {"mnist": "mnist", "gz1": "gz1-sdss", "gz2-kaggle": "gz2-kaggle"}


def resolve_data(name: str, data: str | Path | None) -> Path | None:
    """The data folder of a real-data task; the package ships no data, so ``data`` must be given."""
    if name not in DATA_FOLDERS:
        return None
    if data is None:
        raise InputError(f"benchmark {name} needs --data DIR: a {DATA_FOLDERS[name]} folder (see "
                         f"benchmarks/README or the data README)")
    return Path(data)


def run_benchmark(name: str, out: str | Path, *, data: str | Path | None = None, seeds: int = 5,
                  epochs_scale: float = 1.0, overrides: list[str] | None = None, n: int | None = None,
                  baselines: tuple[str, ...] | list[str] = BASELINES,
                  log: Callable[[str], None] = print, crop: str | float | Crop = GZ1_CROP,
                  derotate: bool = GZ1_DEROTATE, flux_norm: bool = GZ1_FLUX_NORM,
                  held_out: float | None = HELD_OUT, colour: bool = False,
                  only: list[str] | None = None,
                  ceilings: tuple[str, ...] | list[str] = CEILINGS) -> dict[str, Any]:
    """Run benchmark ``name`` over seeds 0..seeds-1; write ``out/<task>/seed<i>.json`` and ``out/summary.json``.

    ``n`` limits the number of images (MNIST/GZ1: a fixed random subset; simulated: how many to draw); ``only``
    runs just the named tasks (e.g. ``["gz1-k3"]``); ``ceilings`` are the supervised references
    (:mod:`astrovader.benchmark.ceilings`) scored beside them. On GZ1,
    ``held_out`` (default 0.3) is the share of galaxies every method is scored on and none is fitted on; None
    fits and scores on all of them (the old mode)."""
    if name not in BENCHMARKS:
        raise InputError(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)}")
    if seeds < 1:
        raise InputError(f"--seeds must be >= 1, got {seeds}")
    if name == "gz1":
        crop = gz1_stamps(crop, derotate, flux_norm)  # a bad --crop fails here, before any work
    for kind, chosen, known in (("baseline", baselines, BASELINES), ("ceiling", ceilings, CEILINGS)):
        if bad := [m for m in chosen if m not in known]:
            raise InputError(f"unknown {kind}(s) {', '.join(bad)}; choose from {', '.join(known)}")
    out = Path(out)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    source = resolve_data(name, data)
    if name == "mnist":
        tasks = mnist_tasks(source, n, cache)
    elif name == "gz1":
        tasks = gz1_tasks(source, n, cache, log, crop, held_out, colour)
    elif name == "gz2-kaggle":
        tasks = gz2_kaggle_tasks(source, n, cache, log, held_out)
    elif name == "sim-suite":
        tasks = sim_suite_tasks(n, cache, held_out=held_out, only=only)
    else:
        tasks = simulated_tasks(n, cache)

    if only:
        unknown = sorted(set(only) - {t.name for t in tasks})
        if unknown:
            raise InputError(f"--tasks: {name} has no task {', '.join(unknown)}; its tasks: "
                             f"{', '.join(t.name for t in tasks)}")
        tasks = [t for t in tasks if t.name in only]
    summary: dict[str, Any] = {"benchmark": name, "seeds": seeds, "epochs_scale": epochs_scale,
                               "overrides": list(overrides or []), "tasks": {}}
    features: dict[tuple[str, str, str | int], np.ndarray] = {}  # AE/VAE latents shared by tasks on the same dataset
    references: dict[tuple[str, int, int, int], dict[str, Any]] = {}  # ceilings: they depend on the images, not on K
    for task in tasks:
        base_cfg = scale_epochs(apply_overrides(task.config, overrides), epochs_scale)
        if task.dataset is None:
            task.dataset = cache / f"{task.name}-n{len(task.images)}"
            if not (is_dataset(task.dataset) and Dataset(task.dataset).complete):
                if task.dataset.exists():
                    shutil.rmtree(task.dataset)
                write_dataset(task.dataset, task.images, pd.DataFrame({"id": np.arange(len(task.images)),
                                                                       "label": task.labels}))
        task_dir = out / task.name
        task_dir.mkdir(parents=True, exist_ok=True)
        per_seed = []
        for seed in range(seeds):
            cfg = copy.deepcopy(base_cfg)
            cfg.train.seed = seed
            settings = {"config": cfg.to_dict(), "n_images": len(task.images), "baselines": list(baselines)}
            if ceilings:
                settings["ceilings"] = list(ceilings)
            if task.preprocessing:
                settings["preprocessing"] = task.preprocessing
            path = task_dir / f"seed{seed}.json"
            if path.is_file():
                old = json.loads(path.read_text())
                if old.get("settings") == json.loads(json.dumps(settings)):
                    log(f"{task.name} seed {seed}: already done ({path})")
                    per_seed.append(old)
                    continue
            log(f"{task.name} seed {seed}: {len(task.images)} images, {cfg.train.epochs} epochs, "
                f"K={cfg.model.n_components}, J={cfg.model.latent_dim}")
            methods = {"astrovader": run_astrovader(task, cfg, out / "runs" / task.name / f"seed{seed}")}
            log(f"  astrovader: {_short(methods['astrovader'])}")
            for b in baselines:
                methods[b] = run_baseline(b, task, cfg, features)
                log(f"  {b}: {_short(methods[b])}")
            methods.update(_ceilings(task, seed, ceilings, references, cache, log))
            # VaDE training amplifies floating-point order: the same seed on another thread count is another run
            # (benchmarks/RESULTS.md), so the count is recorded with the numbers.
            record = {"task": task.name, "seed": seed, "settings": settings, "torch_threads": torch.get_num_threads(),
                      "methods": methods}
            atomic_write_json(path, record)
            per_seed.append(record)
        evaluated = (f"held-out {len(task.eval_index):,} of {len(task.images):,} images (fitted on the other "
                     f"{len(task.fit_index):,})" if task.test is not None else f"all {len(task.images):,} images "
                     "(the same images every method was fitted on)")
        summary["tasks"][task.name] = {"n_images": len(task.images), "evaluated_on": evaluated,
                                       "n_classes": int(len(np.unique(task.labels))),
                                       "n_components": base_cfg.model.n_components, "epochs": base_cfg.train.epochs,
                                       "reference": task.reference, "methods": summarise(per_seed)}
    atomic_write_json(out / "summary.json", summary)
    return summary


def _ceilings(task: Task, seed: int, ceilings: tuple[str, ...] | list[str],
              references: dict[tuple[str, int, int, int], dict[str, Any]], cache: Path,
              log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """The supervised references of one seed; fitted once per (seed, images, held-out part), as they do not
    depend on K."""
    out = {}
    for c in ceilings:
        key = (c, seed, hash(task.images.tobytes()), hash(task.eval_index.tobytes()))
        if key not in references:
            references[key] = run_ceiling(c, task, seed, cache)
        out[c] = references[key]
        log(f"  {c}: {_short(out[c])}")
    return out


def _short(r: dict[str, Any]) -> str:
    parts = [f"{m} {r[m]:.4f}" for m in METRICS if m in r]
    if "knn_accuracy" in r:
        parts.append(f"kNN {r['knn_accuracy']:.4f}")
    if "linear_probe" in r:
        parts.append(f"linear probe {r['linear_probe']:.4f}")
    if "neighbour_agreement" in r:
        parts.append(f"neighbours agree {r['neighbour_agreement']:.4f}")
    if "recon_mse" in r:
        parts.append(f"recon MSE {r['recon_mse']:.2e}")
    if "at_init" in r:
        parts.append(f"(at GMM init: accuracy {r['at_init']['accuracy']:.4f})")
    parts.append(f"empty {r.get('empty_components')}, nan {r.get('nan')}, {r.get('seconds', 0):.0f}s")
    return ", ".join(parts)


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text table per task: mean +- std (worst seed) of each metric and the health flags, the unsupervised
    methods first, then the supervised ceiling, then the share of the best ceiling's NMI the methods reach."""
    lines: list[str] = []
    for name, task in summary["tasks"].items():
        lines.append(f"{name}: {task['n_images']} images, {task['n_classes']} classes, K={task['n_components']}, "
                     f"{task['epochs']} epochs, {summary['seeds']} seed(s); scored on "
                     f"{task.get('evaluated_on', 'all images')}")
        cols = [*METRICS, "knn_accuracy", "linear_probe", "neighbour_agreement", "recon_mse"]
        names = {"knn_accuracy": "kNN acc", "linear_probe": "linear probe", "neighbour_agreement": "neighbours agree",
                 "recon_mse": "recon MSE"}
        present = [c for c in cols if any(c in row for row in task["methods"].values())]
        header = f"  {'method':<30}" + "".join(f"{names.get(c, c):>24}" for c in present)
        lines.append(header + f"{'empty':>7}{'NaN':>5}")
        unsupervised = {m: r for m, r in task["methods"].items() if m not in CEILINGS}
        ceiling = {m: r for m, r in task["methods"].items() if m in CEILINGS}
        for group, rows in (("", unsupervised), ("  supervised ceiling (fitted with the labels on the same "
                                                  "galaxies, scored on the same held-out ones):", ceiling)):
            if group and rows:
                lines.append(group)
            for method, row in rows.items():
                cells = "".join(f"{_cell(row.get(c), c == 'recon_mse'):>24}" for c in present)
                lines.append(f"  {CEILING_NAMES.get(method, method):<30}{cells}"
                             f"{row['runs_with_empty_components']:>7}{'yes' if row['any_nan'] else 'no':>5}")
        best = max((r["nmi"]["mean"] for r in ceiling.values() if "nmi" in r), default=None)
        if best:
            shares = ", ".join(f"{m} {r['nmi']['mean'] / best:.2f}" for m, r in unsupervised.items() if "nmi" in r)
            lines.append(f"  share of the best supervised NMI ({best:.4f}): {shares}")
        for ref, value in task.get("reference", {}).items():
            lines.append(f"  {ref}: accuracy {value:.4f}")
        lines.append("")
    lines.append("cells: mean +- std (worst seed); empty: runs with a component that has no members")
    return "\n".join(lines)


def _cell(stats: dict[str, float] | None, small: bool = False) -> str:
    if not stats:
        return "-"
    if small:
        return f"{stats['mean']:.2e}+-{stats['std']:.1e}"
    return f"{stats['mean']:.4f}+-{stats['std']:.4f} ({stats['min']:.3f})"


