"""Inference throughput end to end: on-disk dataset -> latent means, component probabilities -> Parquet.

Classifying a survey (the paper's 100 million objects) is dominated by this path, so it is measured from
the dataset on disk to the catalogue file, not model-only. Both paths run the same AstroVaDErNet in one
process, on a synthetic uint8 dataset written to a temporary directory, so the ratio is side by side:

* baseline (what a first port looks like): a torch DataLoader whose Dataset reads one image at a time
  from the on-disk dataset and returns it as float32, default collation, float32 forward, one predict per
  batch, the rows of each batch collected as pandas DataFrames, concatenated and written at the end.
* astrovader: ``predict_dataset`` (whole zarr blocks streamed, batched channels-last float32 inference,
  each batch appended to a ParquetWriter, bounded memory).

A third row, the model alone on in-memory batches (``infer_batch``), is the ceiling that I/O could reach.

    python benchmarks/bench_predict.py --preset demo --n 8192
    python benchmarks/bench_predict.py --preset paper --n 8192 --device cuda     # on a GPU
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from astrovader.compute import resolve_device
from astrovader.config import Config
from astrovader.data.dataset import Dataset, open_dataset, write_dataset
from astrovader.inference import infer_batch
from astrovader.model import AstroVaDErNet
from astrovader.predict import predict_dataset

try:
    from common import append_results, markdown_table
except ImportError:  # imported as benchmarks.bench_predict
    from benchmarks.common import append_results, markdown_table


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_dataset(path: Path, cfg: Config, n: int, seed: int = 0) -> Dataset:
    """A synthetic uint8 dataset of ``n`` images at the config's size (random pixels: the model's cost does
    not depend on the content, and random pixels defeat compression, the pessimistic case for reading)."""
    m = cfg.model
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, m.channels, m.image_size, m.image_size), dtype=np.uint8)
    return write_dataset(path, images)


def make_net(cfg: Config, device: torch.device, seed: int = 0) -> AstroVaDErNet:
    torch.manual_seed(seed)
    return AstroVaDErNet(cfg).to(device).eval()


class _OneImage(torch.utils.data.Dataset):
    """The obvious map-style Dataset: one row read from the on-disk store per item, as float32."""

    def __init__(self, ds: Dataset):
        self.images = ds.images
        self.ids = ds.ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = np.asarray(self.images[i], dtype=np.float32) / 255.0
        return torch.from_numpy(x), int(self.ids[i])


@torch.no_grad()
def baseline_predict(net: AstroVaDErNet, dataset: str | Path | Dataset, out: Path, device: torch.device,
                     batch_size: int = 1024, limit: int | None = None) -> Path:
    """Baseline catalogue: same columns as ``predict_dataset``, float32 throughout, written at the end."""
    ds = open_dataset(dataset)
    data: torch.utils.data.Dataset = _OneImage(ds)
    if limit is not None:
        data = torch.utils.data.Subset(data, range(min(limit, len(ds))))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
    frames = []
    for x, ids in loader:
        x = x.to(device)
        mu, logvar = net.encode(x)
        recon = net.decode(mu)
        probs = net.gmm.posterior(mu)
        mse = (recon - x).pow(2).flatten(1).mean(1)
        mu, logvar, probs, mse = (t.cpu().numpy() for t in (mu, logvar, probs, mse))
        cols: dict[str, np.ndarray] = {"id": ids.numpy()}
        cols.update({f"z_{j}": mu[:, j] for j in range(mu.shape[1])})
        cols.update({f"logvar_{j}": logvar[:, j] for j in range(logvar.shape[1])})
        cols.update({f"p_{k}": probs[:, k] for k in range(probs.shape[1])})
        cols.update(component=probs.argmax(1).astype(np.int16), max_prob=probs.max(1), recon_mse=mse)
        frames.append(pd.DataFrame(cols))
    pd.concat(frames, ignore_index=True).to_parquet(out, index=False)
    return out


def time_baseline(net: AstroVaDErNet, ds: Dataset, tmp: Path, device: torch.device, batch_size: int) -> float:
    """Images/s of the baseline over the whole dataset, after a one-batch warm-up."""
    baseline_predict(net, ds, tmp / "warm_base.parquet", device, batch_size, limit=batch_size)
    _sync(device)
    t0 = time.perf_counter()
    baseline_predict(net, ds, tmp / "base.parquet", device, batch_size)
    _sync(device)
    return len(ds) / (time.perf_counter() - t0)


def time_optimised(net: AstroVaDErNet, ds: Dataset, tmp: Path, device: torch.device, batch_size: int) -> float:
    """Images/s of ``predict_dataset`` over the whole dataset, after a one-batch warm-up."""
    predict_dataset(net, ds, tmp / "warm_opt.parquet", batch_size=batch_size, stop=batch_size,
                    progress=False)
    _sync(device)
    t0 = time.perf_counter()
    predict_dataset(net, ds, tmp / "opt.parquet", batch_size=batch_size, progress=False)
    _sync(device)  # predict_dataset moves every batch to the host, so this is a formality
    return len(ds) / (time.perf_counter() - t0)


def time_model_only(net: AstroVaDErNet, ds: Dataset, device: torch.device, batch_size: int,
                    max_batches: int = 8) -> float:
    """Images/s of ``infer_batch`` alone on batches already in memory: the ceiling without I/O."""
    n = min(len(ds), batch_size * max_batches)
    x = torch.from_numpy(ds.read(0, n)).to(device).float().div_(255.0)
    batches = list(x.split(batch_size))
    infer_batch(net, batches[0])
    _sync(device)
    t0 = time.perf_counter()
    for b in batches:
        infer_batch(net, b)
    _sync(device)
    return n / (time.perf_counter() - t0)


def run(cfg: Config, n: int, device: torch.device, batch_size: int = 1024) -> dict[str, float]:
    """All three rates on one freshly written dataset (the lines of the table, for run_all and flops)."""
    net = make_net(cfg, device)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ds = make_dataset(tmp / "ds", cfg, n)
        base = time_baseline(net, ds, tmp, device, batch_size)
        opt = time_optimised(net, ds, tmp, device, batch_size)
        ceiling = time_model_only(net, ds, device, batch_size)
    return {"baseline": base, "astrovader": opt, "model_only": ceiling}


def table(rates: dict[str, float], device: torch.device) -> str:
    base = rates["baseline"]
    rows = [["baseline (DataLoader, one image per read, fp32, pandas at the end)", rates["baseline"], 1.0],
            ["astrovader predict_dataset (zarr blocks, batched, channels-last float32, streamed Parquet)",
             rates["astrovader"], rates["astrovader"] / base],
            ["model only (infer_batch on in-memory batches, no I/O)", rates["model_only"],
             rates["model_only"] / base]]
    return markdown_table(["inference path", "images/s", "ratio"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--size", type=int, default=None, help="image size (default: the preset's)")
    ap.add_argument("--n", type=int, default=8192, help="images in the synthetic dataset (default 8192)")
    ap.add_argument("--batch-size", type=int, default=1024, help="images per batch, both paths (default 1024)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = Config.preset(args.preset)
    if args.size:
        cfg.model.image_size = args.size
        cfg.validate()
    device = resolve_device(args.device)
    rates = run(cfg, args.n, device, args.batch_size)
    s = cfg.model.image_size
    tab = table(rates, device)
    print(f"preset {args.preset}, {s}px, {args.n} images, batch {args.batch_size}, device {device}")
    print(tab)
    if not args.no_record:
        load = os.getloadavg()[0]  # other work on the machine lowers both rates; the ratio is side by side
        append_results(f"Inference throughput, dataset on disk to Parquet ({args.preset} preset, {s}px, "
                       f"{args.n} images, batch {args.batch_size}; load average {load:.1f} on {os.cpu_count()} "
                       "cores)", tab, device)


if __name__ == "__main__":
    main()
