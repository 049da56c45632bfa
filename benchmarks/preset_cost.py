"""What a preset costs to train: seconds per epoch of the real training loop, per 1,000 images and for a whole run.

For each preset, a dataset of random uint8 images of the preset's size is trained with the preset's network, batch
and loss for a few gamma-training epochs and a few GMM-phase (static) epochs, through ``astrovader.train.train``
exactly as ``astrovader train`` runs it (checkpoint after every epoch included). The first epoch of each phase is
a warm-up and the last also holds the GMM initialisation or the re-seeding, so neither is counted; the cost does
not depend on what the images show. The whole-run estimate is the preset's number of epochs (times its
``train.restarts``) times the measured epoch time for the catalogue the preset was measured on (the GMM
initialisation and, where a preset has one, the UMAP graph are extra and not included).

    python benchmarks/preset_cost.py                                  # survey presets on this CPU
    python benchmarks/preset_cost.py --presets paper --n 360          # the 128 px paper model, few images
    python benchmarks/preset_cost.py --device cuda --n 20000          # on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from astrovader.compute import resolve_device
from astrovader.config import Config
from astrovader.data.dataset import write_dataset
from astrovader.train import train

try:
    from common import append_results, markdown_table
except ImportError:  # run as a module
    from benchmarks.common import append_results, markdown_table

# the catalogue each preset was measured on: training galaxies of its benchmark
REFERENCE_N = {"demo": 2688, "simulated": 1400, "sdss64-k12": 3180, "sdss64-k3": 3180, "gz2-64": 980,
               "mnist": 10000, "paper": 4663}


def epoch_seconds(preset: str, n: int, device: str, epochs: int = 4) -> dict[str, float]:
    """Median seconds of the gamma-training and of the static epochs, leaving out the first of each phase (warm-up)
    and the last (which also times the GMM initialisation, or the re-seeding at the end of a period)."""
    cfg = Config.preset(preset)
    t = cfg.train
    whole_run = t.epochs * t.restarts  # the preset's schedule (every restart), before it is cut down to time it
    t.restarts = 1
    t.gamma_epochs, t.align_epochs, t.periods, t.anneal_epochs, t.static_epochs = epochs, 0, 1, 0, epochs
    t.gmm_init_embedding, t.validation_fraction, t.device = "none", 0.0, device
    t.gmm_init_batches = max(1, min(t.gmm_init_batches, n // t.batch_size))
    m = cfg.model
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, m.channels, m.image_size, m.image_size), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        ds = write_dataset(Path(tmp) / "data", images)
        hist = train(cfg, ds.path, Path(tmp) / "run", progress=False).history
    gamma = [r["seconds"] for r in hist if r["phase"] == "gamma"][1:-1]
    static = [r["seconds"] for r in hist if r["phase"] == "static"][1:-1]
    per_epoch = statistics.median(gamma + static)
    return {"gamma": statistics.median(gamma), "static": statistics.median(static),
            "per_1000": 1000 * per_epoch / n, "epochs": whole_run}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="demo,simulated,sdss64-k12,sdss64-k3,gz2-64,mnist")
    ap.add_argument("--n", type=int, default=2048, help="images in the timed dataset (default 2048)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on a CPU (default: torch's)")
    ap.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = []
    for preset in [p for p in args.presets.split(",") if p]:
        r = epoch_seconds(preset, args.n, str(device))
        ref = REFERENCE_N.get(preset, args.n)
        run_min = r["epochs"] * r["per_1000"] * ref / 1000 / 60
        rows.append([preset, r["gamma"], r["static"], r["per_1000"], ref, r["epochs"], run_min])
        print(rows[-1], flush=True)
    table = markdown_table(["preset", "s / gamma epoch", "s / static epoch", "s / epoch / 1,000 images",
                            "reference catalogue", "epochs", "whole run, minutes"], rows)
    print(table)
    if not args.no_record:
        append_results(f"Training cost per preset ({args.n} random images per preset)", table, device)


if __name__ == "__main__":
    main()
