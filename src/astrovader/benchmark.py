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
from dataclasses import dataclass
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
    held_out_split,
    knn_accuracy,
    linear_probe_accuracy,
    run_baseline,
    score,
)
from astrovader.config import SDSS64_STAMPS, Config
from astrovader.data.dataset import Dataset, atomic_write_json, is_dataset, write_dataset
from astrovader.data.simulate import DEFAULT_VARIANT, Variant
from astrovader.inference import infer
from astrovader.train import TrainingDiverged, train

if TYPE_CHECKING:
    from astrovader.data.stamps import Crop

BENCHMARKS = ("mnist", "gz1", "gz2-kaggle", "simulated", "sim-suite")
HELD_OUT = 0.3  # real-galaxy tasks: fit on 70%, score on a seeded, stratified 30% nobody was fitted or tuned on
VADE_MNIST_ACCURACY = 0.9446  # Jiang et al. 2017, Table 2 (VaDE on MNIST, all 70,000 digits)
GZ1_CLASSES = {0: 0, 1: 1, 2: 1, 3: 2}  # gz1_class -> elliptical, spiral (cw + acw), edge-on; 4, 5 dropped
GZ1_CLASS_NAMES = ("elliptical", "spiral", "edge_on")


# --------------------------------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------------------------------
def gz1_config(n_clusters: int) -> Config:
    """The measured real-galaxy preset for a GZ1 task: ``sdss64-k12`` at K = 12, else ``sdss64-k3`` with K set
    (s3VDC's gamma and VaDE's diagonal prior)."""
    if n_clusters == 12:
        return Config.preset("sdss64-k12")
    cfg = Config.preset("sdss64-k3")
    cfg.model.n_clusters = n_clusters
    cfg.validate()
    return cfg


def scale_epochs(cfg: Config, factor: float) -> Config:
    """Multiply every phase's length by ``factor`` (at least one epoch per non-empty phase), for smoke runs.
    The learning-rate decay follows, because it is defined to reach lr_min at the last epoch."""
    cfg = copy.deepcopy(cfg)
    if factor == 1:
        return cfg
    if not factor > 0:
        raise ValueError(f"--epochs-scale must be > 0, got {factor}")
    t = cfg.train
    t.gamma_epochs = max(1, round(t.gamma_epochs * factor))
    t.align_epochs = max(1, round(t.align_epochs * factor)) if t.align_epochs else 0
    t.anneal_epochs = max(1, round(t.anneal_epochs * factor)) if t.anneal_epochs else 0
    t.static_epochs = max(1, round(t.static_epochs * factor)) if t.static_epochs else 0
    t.lr_decay_every = max(1, min(t.lr_decay_every, t.epochs))
    cfg.validate()
    return cfg


def apply_overrides(cfg: Config, overrides: list[str] | None) -> Config:
    """``key=value`` settings on top of a benchmark's own config (the CLI's --set)."""
    return cfg.with_overrides(overrides)


# --------------------------------------------------------------------------------------------------
# tasks: images with true classes
# --------------------------------------------------------------------------------------------------
def _subset(images: np.ndarray, labels: np.ndarray, n: int | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random subset (the same for every seed, so seeds differ only in training)."""
    if n is None or n >= len(images):
        return images, labels
    idx = np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))
    return images[idx], labels[idx]


def mnist_tasks(data: Path, n: int | None, cache: Path) -> list[Task]:
    from astrovader.data.mnist import load_mnist

    images, labels = load_mnist(data, "t10k")
    images, labels = _subset(images, labels, n)
    return [Task("mnist", images, labels, Config.preset("mnist"), reference={"VaDE (published)": VADE_MNIST_ACCURACY})]


# How the 423 px fixed-scale GZ1 cut-outs become 64 px stamps: the sdss64 presets' recipe (astrovader.config).
GZ1_CROP = SDSS64_STAMPS["crop"]
GZ1_DEROTATE = SDSS64_STAMPS["derotate"]
GZ1_FLUX_NORM = SDSS64_STAMPS["flux_norm"]


def gz1_stamps(crop: str | float | Crop = GZ1_CROP, derotate: bool = GZ1_DEROTATE,
               flux_norm: bool = GZ1_FLUX_NORM) -> Crop:
    """The gz1 stamp recipe (``crop``, ``derotate`` and ``flux_norm`` as for ``astrovader ingest``) as one
    :class:`Crop`; a bad ``crop`` raises ValueError."""
    from astrovader.data.stamps import FLUX_LEVEL, parse_crop

    return parse_crop(crop, derotate=derotate, flux_level=FLUX_LEVEL if flux_norm else None)


def gz1_tasks(data: Path, n: int | None, cache: Path, log: Callable[[str], None] = print,
              stamps: Crop | None = None, held_out: float | None = HELD_OUT, colour: bool = False) -> list[Task]:
    """GZ1 SDSS cut-outs as 64 px grey (or, with ``colour``, gri) stamps made as ``stamps`` says (default
    :func:`gz1_stamps`); classes elliptical / spiral (cw + acw) / edge-on. With ``held_out`` (a fraction), every
    method is fitted on the other galaxies and scored on a seeded, stratified held-out part of that size."""
    spec = stamps or gz1_stamps()
    labels_csv = data / "labels.csv"
    if not labels_csv.is_file():
        raise FileNotFoundError(f"{data}: no labels.csv (expected the gz1-sdss folder with images/ and labels.csv)")
    table = pd.read_csv(labels_csv, dtype={"objid": str})
    table = table[table["gz1_class"].isin(list(GZ1_CLASSES))]
    if n is not None and n < len(table):
        table = table.sample(n=n, random_state=0).sort_index()
    name = f"gz1-64px{'-gri' if colour else ''}-crop{spec.describe()}-n{len(table)}"
    ds = _cached_stamps(data, table, cache / name, "objid", spec, log, colour)
    labels = ds.catalog["gz1_class"].map(GZ1_CLASSES).to_numpy(np.int64)
    images, test, train_set = _held_out(ds, labels, held_out)
    pre = {"crop": spec.describe(), "size": 64, "held_out": held_out or 0} | ({"colour": True} if colour else {})
    tasks = []
    for k in (12, 3):
        cfg = gz1_config(k)
        cfg.model.channels = 3 if colour else 1
        tasks.append(Task(f"gz1-k{k}", images, labels, cfg, knn=True, dataset=train_set, preprocessing=pre,
                          test=test))
    return tasks


def _cached_stamps(data: Path, table: pd.DataFrame, out: Path, id_column: str, crop: Crop,
                   log: Callable[[str], None], colour: bool = False) -> Dataset:
    """The rows of ``table`` (a labels table whose ``file`` paths are relative to ``data``) as 64 px stamps
    framed by ``crop``, ingested once into ``out`` and reused by later runs."""
    from astrovader.data.ingest import ingest_folder

    if not (is_dataset(out) and Dataset(out).complete):
        out.mkdir(parents=True, exist_ok=True)
        sub_csv = out.parent / f"{out.name}-labels.csv"
        table.to_csv(sub_csv, index=False)
        log(f"ingesting {len(table)} images of {data} into {out} (cached for later runs)")
        report = ingest_folder(data, out, labels=sub_csv, id_column=id_column, crop=crop, size=64, progress=False,
                               labels_only=True, colour=colour)
        if report.failures:
            log(f"  {len(report.failures)} images could not be framed or read (listed in {out}/ingest_report.csv)")
    return Dataset(out)


def _held_out(ds: Dataset, labels: np.ndarray, held_out: float | None) -> tuple[np.ndarray, np.ndarray | None, Path]:
    """The images of ``ds``, the positions held out from fitting (None without ``held_out``), and the dataset
    astrovader trains on: ``ds`` itself, or a cached copy without the held-out images."""
    images = ds.load()
    if not held_out:
        return images, None, ds.path
    test = held_out_split(labels, held_out)
    train_set = ds.path.parent / f"{ds.path.name}-fit{1 - held_out:g}"
    if not (is_dataset(train_set) and Dataset(train_set).complete):
        if train_set.exists():
            shutil.rmtree(train_set)
        keep = np.setdiff1d(np.arange(len(labels)), test)
        write_dataset(train_set, images[keep], ds.catalog.iloc[keep].reset_index(drop=True))
    return images, test, train_set


def gz2_kaggle_tasks(data: Path, n: int | None, cache: Path, log: Callable[[str], None] = print,
                     held_out: float | None = HELD_OUT) -> list[Task]:
    """Galaxy Zoo 2 images in the Kaggle layout, scaled to each galaxy's Petrosian radius as the paper's were
    (the central 192 of 424 px, then 64 px, grey): spiral (1) against not (0), K = 2, with the gz1 K = 3 preset's
    settings (``sdss64-k3``) apart from K."""
    from astrovader.data.sources import SOURCE_CROPS

    labels_csv = data / "labels.csv"
    if not labels_csv.is_file():
        raise FileNotFoundError(f"{data}: no labels.csv (expected the gz2-kaggle folder with images/ and labels.csv)")
    table = pd.read_csv(labels_csv)
    if n is not None and n < len(table):
        table = table.sample(n=n, random_state=0).sort_index()
    ds = _cached_stamps(data, table, cache / f"gz2-kaggle-64px-n{len(table)}", "GalaxyID", SOURCE_CROPS["kaggle"],
                        log)
    labels = ds.catalog["spiral"].to_numpy(np.int64)
    images, test, train_set = _held_out(ds, labels, held_out)
    cfg = gz1_config(2)
    pre = {"crop": SOURCE_CROPS["kaggle"].describe(), "size": 64, "held_out": held_out or 0}
    return [Task("gz2-kaggle-k2", images, labels, cfg, knn=True, dataset=train_set, preprocessing=pre, test=test)]


def simulated_tasks(n: int | None, cache: Path) -> list[Task]:
    from astrovader.data.simulate import simulate

    n = n or 3000
    tasks = []
    for cf in (0.0, 0.2):
        out = cache / f"simulated-32px-n{n}-cf{cf:g}"
        if not (is_dataset(out) and Dataset(out).complete):
            if out.exists():
                shutil.rmtree(out)
            simulate(out, n, size=32, seed=0, companion_fraction=cf, workers=1, progress=False)
        ds = Dataset(out)
        tasks.append(Task(f"simulated-cf{cf:g}", ds.load(), ds.catalog["true_class"].to_numpy(np.int64),
                          Config.preset("simulated"), knn=True, dataset=out))
    return tasks


@dataclass(frozen=True)
class SimVariant:
    """One simulated survey of the ``sim-suite`` benchmark: the simulator's :class:`Variant`, stamp size and
    companion fraction, and its role: settings may be ``tune``-d on it, or it is ``held-out`` (only reported)."""

    name: str
    role: str
    size: int
    companion_fraction: float
    variant: Variant = DEFAULT_VARIANT


# Settings were chosen, and the mixture's failures diagnosed, on the "tune" surveys (the demo's own simulator, and
# the other population as the new user met it); every other one differs in the galaxy population (family
# "sersic": no knots, no dust dimming, overlapping fluxes), companions, size, PSF, noise, stretch or pixel scale,
# and is only reported.
SIM_SUITE = (
    SimVariant("demo-cf0", "tune", 32, 0.0),
    SimVariant("demo-cf20", "tune", 32, 0.2),
    SimVariant("sersic-cf30", "tune", 32, 0.3, Variant(family="sersic")),
    SimVariant("sersic-64px-noisy", "held-out", 64, 0.1,
               Variant(family="sersic", sky=(300.0, 600.0), psf_fwhm=(1.5, 2.2))),
    SimVariant("demo-linear-cf40", "held-out", 32, 0.4, Variant(stretch="linear",
                                                                        stretch_max=300.0)),
    SimVariant("sersic-small-fine", "held-out", 32, 0.0, Variant(family="sersic", size_factor=0.6,
                                                                  pixel_scale=0.25, softening=30.0)),
    SimVariant("sersic-bright-seeing-cf20", "held-out", 32, 0.2, Variant(family="sersic", flux_dex=0.3,
                                                                          psf_fwhm=(1.8, 2.6))),
)


def sim_suite_config(size: int) -> Config:
    """What a new user gets for simulated stamps of ``size`` px: the ``simulated`` preset (the demo's network,
    every image trained on), built for the stamps' size as ``astrovader train`` does."""
    cfg = Config.preset("simulated")
    cfg.model.image_size = size
    cfg.validate()
    return cfg


def sim_suite_tasks(n: int | None, cache: Path, held_out: float | None = HELD_OUT,
                    only: list[str] | None = None) -> list[Task]:
    """The :data:`SIM_SUITE` surveys (``only``: just the tasks named ``sim-<name>``), simulated once into
    ``cache``; each task is fitted on 70% and scored on the other 30% (``held_out``)."""
    from astrovader.data.simulate import simulate

    n = n or 2000
    tasks = []
    for sv in SIM_SUITE:
        if only and f"sim-{sv.name}" not in only:
            continue
        out = cache / f"sim-{sv.name}-n{n}"
        if not (is_dataset(out) and Dataset(out).complete):
            if out.exists():
                shutil.rmtree(out)
            simulate(out, n, size=sv.size, seed=1, companion_fraction=sv.companion_fraction, workers=1,
                     progress=False, variant=sv.variant)
        ds = Dataset(out)
        labels = ds.catalog["true_class"].to_numpy(np.int64)
        images, test, train_set = _held_out(ds, labels, held_out)
        pre = {"variant": sv.variant.describe(), "size": sv.size, "companion_fraction": sv.companion_fraction,
               "role": sv.role, "held_out": held_out or 0}
        tasks.append(Task(f"sim-{sv.name}", images, labels, sim_suite_config(sv.size), knn=True, dataset=train_set,
                          preprocessing=pre, test=test))
    return tasks


# --------------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------------------
def run_astrovader(task: Task, cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Train with the s3VDC schedule; score the GMM right after its initialisation and at the end.

    Training stops after gamma-training (plus GMM init) and is resumed, which on CPU reproduces an
    uninterrupted run exactly; the extra score shows how much of the final accuracy the initialisation
    already had, the main question when tuning."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    k = cfg.model.n_clusters
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
        for key in (*METRICS, "knn_accuracy", "linear_probe", "recon_mse"):
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
        raise ValueError(f"benchmark {name} needs --data DIR: a {DATA_FOLDERS[name]} folder (see "
                         f"benchmarks/README or the data README)")
    return Path(data)


def run_benchmark(name: str, out: str | Path, *, data: str | Path | None = None, seeds: int = 5,
                  epochs_scale: float = 1.0, overrides: list[str] | None = None, n: int | None = None,
                  baselines: tuple[str, ...] | list[str] = BASELINES,
                  log: Callable[[str], None] = print, crop: str | float | Crop = GZ1_CROP,
                  derotate: bool = GZ1_DEROTATE, flux_norm: bool = GZ1_FLUX_NORM,
                  held_out: float | None = HELD_OUT, colour: bool = False,
                  only: list[str] | None = None) -> dict[str, Any]:
    """Run benchmark ``name`` over seeds 0..seeds-1; write ``out/<task>/seed<i>.json`` and ``out/summary.json``.

    ``n`` limits the number of images (MNIST/GZ1: a fixed random subset; simulated: how many to draw); ``only``
    runs just the named tasks (e.g. ``["gz1-k3"]``). On GZ1,
    ``held_out`` (default 0.3) is the share of galaxies every method is scored on and none is fitted on; None
    fits and scores on all of them (the old mode)."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)}")
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if name == "gz1":
        crop = gz1_stamps(crop, derotate, flux_norm)  # a bad --crop fails here, before any work
    bad = [b for b in baselines if b not in BASELINES]
    if bad:
        raise ValueError(f"unknown baseline(s) {', '.join(bad)}; choose from {', '.join(BASELINES)}")
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
        known = [f"sim-{sv.name}" for sv in SIM_SUITE] if name == "sim-suite" else [t.name for t in tasks]
        unknown = sorted(set(only) - set(known))
        if unknown:
            raise ValueError(f"--tasks: {name} has no task {', '.join(unknown)}; its tasks: {', '.join(known)}")
        tasks = [t for t in tasks if t.name in only]
    summary: dict[str, Any] = {"benchmark": name, "seeds": seeds, "epochs_scale": epochs_scale,
                               "overrides": list(overrides or []), "tasks": {}}
    features: dict[tuple[str, str, str | int], np.ndarray] = {}  # AE/VAE latents shared by tasks on the same dataset
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
                f"K={cfg.model.n_clusters}, J={cfg.model.latent_dim}")
            methods = {"astrovader": run_astrovader(task, cfg, out / "runs" / task.name / f"seed{seed}")}
            log(f"  astrovader: {_short(methods['astrovader'])}")
            for b in baselines:
                methods[b] = run_baseline(b, task, cfg, features)
                log(f"  {b}: {_short(methods[b])}")
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
                                       "n_clusters": base_cfg.model.n_clusters, "epochs": base_cfg.train.epochs,
                                       "reference": task.reference, "methods": summarise(per_seed)}
    atomic_write_json(out / "summary.json", summary)
    return summary


def _short(r: dict[str, Any]) -> str:
    parts = [f"{m} {r[m]:.4f}" for m in METRICS if m in r]
    if "knn_accuracy" in r:
        parts.append(f"kNN {r['knn_accuracy']:.4f}")
    if "linear_probe" in r:
        parts.append(f"linear probe {r['linear_probe']:.4f}")
    if "recon_mse" in r:
        parts.append(f"recon MSE {r['recon_mse']:.2e}")
    if "at_init" in r:
        parts.append(f"(at GMM init: accuracy {r['at_init']['accuracy']:.4f})")
    parts.append(f"empty {r.get('empty_components')}, nan {r.get('nan')}, {r.get('seconds', 0):.0f}s")
    return ", ".join(parts)


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text table per task: mean +- std (worst seed) of each metric and the health flags."""
    lines: list[str] = []
    for name, task in summary["tasks"].items():
        lines.append(f"{name}: {task['n_images']} images, {task['n_classes']} classes, K={task['n_clusters']}, "
                     f"{task['epochs']} epochs, {summary['seeds']} seed(s); scored on "
                     f"{task.get('evaluated_on', 'all images')}")
        cols = [*METRICS, "knn_accuracy", "linear_probe", "recon_mse"]
        names = {"knn_accuracy": "kNN acc", "linear_probe": "linear probe", "recon_mse": "recon MSE"}
        present = [c for c in cols if any(c in row for row in task["methods"].values())]
        header = f"  {'method':<12}" + "".join(f"{names.get(c, c):>24}" for c in present)
        lines.append(header + f"{'empty':>7}{'NaN':>5}")
        for method, row in task["methods"].items():
            cells = "".join(f"{_cell(row.get(c), c == 'recon_mse'):>24}" for c in present)
            lines.append(f"  {method:<12}{cells}{row['runs_with_empty_components']:>7}"
                         f"{'yes' if row['any_nan'] else 'no':>5}")
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


# --------------------------------------------------------------------------------------------------
# deblending, measured where the truth is known
# --------------------------------------------------------------------------------------------------
def deblending_on_simulation(run_dir: str | Path, dataset: str | Path | Dataset, n: int = 200,
                             companion_components: list[int] | None = None, steps: int = 8,
                             companion_radius: float = 3.0, progress: bool = False) -> dict[str, Any]:
    """How much of a companion the deblending figure removes, on simulated galaxies whose companions' positions
    are known (``astrovader simulate`` catalogues: ``companion_x``/``companion_y``, ``offset_x``/``offset_y`` in
    pixels from the centre, y up, and ``half_light_radius`` in arcsec).

    The ``n`` most probable members of the companion components (default: those ``describe`` flags) that truly
    have a companion are deblended. Sky-subtracted flux is measured in a circle of ``companion_radius`` px at the
    companion and in one of 2 x the galaxy's half-light radius (kept clear of the companion) at the galaxy, on
    the input, on its reconstruction (the start of the line) and on the end of the line. Returns the means and
    medians of the companion flux removed (1 - after / input) and of |central flux after / input - 1|."""
    from astrovader.analysis.describe import DescribeSettings, describe_components, pixel_scale_of
    from astrovader.analysis.morphology import aperture_flux, companion_mask, strictly_companion_free
    from astrovader.data.dataset import open_dataset
    from astrovader.explore import deblend
    from astrovader.inference import infer
    from astrovader.runs import load_network

    _, net = load_network(run_dir)
    ds = open_dataset(dataset)
    cat = ds.catalog
    needed = {"has_companion", "companion_x", "companion_y", "offset_x", "offset_y", "half_light_radius"}
    if missing := needed - set(cat.columns):
        raise ValueError(f"{ds.path}: not a simulated dataset with known companions (no {', '.join(sorted(missing))} "
                         "column); make one with astrovader simulate")
    pred = infer(net, ds, progress=progress)
    if companion_components is None:
        companion_components = describe_components(pred, ds, settings=DescribeSettings(n_detailed=0)) \
            .companion_components
    truth = cat["has_companion"].to_numpy(bool)
    members = np.flatnonzero(np.isin(pred.labels, companion_components) & truth)
    members = members[np.argsort(-pred.probs[members].max(1), kind="stable")][:n]
    if len(members) == 0:
        raise ValueError(f"no galaxy with a companion in components {companion_components}")
    res = deblend(net, pred, ds, companion_components, galaxies=members, steps=steps,
                  companion_mask=companion_mask, companion_free=strictly_companion_free)
    sub = cat.iloc[members]
    c0 = (ds.image_size - 1) / 2
    cx, cy = c0 + sub["companion_x"].to_numpy(), c0 - sub["companion_y"].to_numpy()
    gx, gy = c0 + sub["offset_x"].to_numpy(), c0 - sub["offset_y"].to_numpy()
    scale = pixel_scale_of(ds) or 1.0
    gal_r = np.clip(np.minimum(2 * sub["half_light_radius"].to_numpy() / scale,
                               np.hypot(cx - gx, cy - gy) - companion_radius), 1.5, None)

    inputs = np.stack([r["galaxy_image"] for r in res])
    strips = np.stack([r["strip"] for r in res])
    comp_in, gal_in = aperture_flux(inputs, cx, cy, companion_radius), aperture_flux(inputs, gx, gy, gal_r)
    out: dict[str, Any] = {"n": len(res), "companion_components": list(companion_components),
                           "twin_has_companion": float(truth[pred.rows[[r["partner"] for r in res]]].mean())}
    if "class_name" in cat.columns:
        names = cat["class_name"].to_numpy()
        out["twin_same_class"] = float((names[pred.rows[members]] ==
                                        names[pred.rows[[r["partner"] for r in res]]]).mean())
    for name, t in (("reconstruction", 0), ("deblended", steps)):
        removed = 1 - aperture_flux(strips[:, t], cx, cy, companion_radius) / comp_in
        change = np.abs(aperture_flux(strips[:, t], gx, gy, gal_r) / gal_in - 1)
        out[name] = {"companion_removed_mean": float(removed.mean()),
                     "companion_removed_median": float(np.median(removed)),
                     "central_change_mean": float(change.mean()), "central_change_median": float(np.median(change))}
    return out
