"""Training throughput: astrovader's loop against a straightforward baseline of the same model.

Baseline (what a first port looks like): a torch DataLoader whose Dataset returns one float32 image at a
time, flipped with NumPy on the host, default collation, float32, no compile. Optimised: uint8 images
resident on the device, flips and scaling on the device, bf16 autocast + channels-last on CUDA.
Both run the same AstroVaDErNet and the same loss for the same number of steps in one process.

    python benchmarks/bench_train.py --preset demo --size 32 --steps 30
    python benchmarks/bench_train.py --preset paper --steps 20        # on a GPU
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from astrovader.compute import resolve_device, training_bf16, training_channels_last
from astrovader.config import Config
from astrovader.data.dataset import write_dataset
from astrovader.feeding import BatchFeeder, random_flips, to_float
from astrovader.model import AstroVaDErNet, vade_losses
from astrovader.schedule import EpochPlan
from astrovader.train import _make_step

try:
    from common import append_results, markdown_table
except ImportError:  # run as a module
    from benchmarks.common import append_results, markdown_table


class _HostImages(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, seed: int = 0):
        self.images = images
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i].astype(np.float32) / 255.0
        if self.rng.random() < 0.5:
            x = x[:, :, ::-1]
        if self.rng.random() < 0.5:
            x = x[:, ::-1, :]
        return torch.from_numpy(x.copy())


def baseline(cfg: Config, images: np.ndarray, steps: int, device: torch.device) -> float:
    net = AstroVaDErNet(cfg).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    loader = torch.utils.data.DataLoader(_HostImages(images), batch_size=cfg.train.batch_size, shuffle=True,
                                         drop_last=True, num_workers=0)
    plan = EpochPlan(0, "anneal", 0.5, 0.0, 0.15, 1e-4)
    done, t0 = 0, None
    while done < steps + 2:
        for x in loader:
            if done == 2:
                _sync(device)
                t0 = time.perf_counter()
            x = x.to(device)
            out = net(x)
            terms = vade_losses(net, x, out, cfg.loss, True)
            loss = (terms["recon"] + plan.kl_gmm_weight * terms["kl_gmm"]).mean() + cfg.loss.l2 * net.l2_penalty()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_value_(net.parameters(), 1.0)
            opt.step()
            loss.item()  # a typical loop logs every step
            done += 1
            if done == steps + 2:
                break
    _sync(device)
    return steps * cfg.train.batch_size / (time.perf_counter() - t0)


def optimised(cfg: Config, ds, steps: int, device: torch.device) -> tuple[float, float]:
    net = AstroVaDErNet(cfg).to(device)
    cl = training_channels_last(cfg, device)
    if cl:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    feeder = BatchFeeder(ds, np.arange(len(ds)), device, cfg.train.max_resident_gb)
    step = _make_step(net, opt, cfg, device)
    plan = EpochPlan(0, "anneal", 0.5, 0.0, 0.15, 1e-4)
    g = torch.Generator(device=device).manual_seed(0)

    def batches():
        while True:
            yield from feeder.batches(cfg.train.batch_size, g)

    it = batches()
    for _ in range(2):
        step(to_float(next(it), cl), plan, g)
    _sync(device)
    t0 = time.perf_counter()
    acc = torch.zeros(5, dtype=torch.float64, device=device)
    for _ in range(steps):
        acc += step(to_float(next(it), cl), plan, g)
    _sync(device)
    total = time.perf_counter() - t0
    # data pipeline alone: fetching, scaling and flipping the same number of batches
    t1 = time.perf_counter()
    for _ in range(steps):
        x = to_float(next(it), cl)
        x = random_flips(x, g)
    _sync(device)
    data = time.perf_counter() - t1
    return steps * cfg.train.batch_size / total, data / total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--size", type=int, default=None, help="image size (default: the preset's)")
    ap.add_argument("--n", type=int, default=4096, help="images in the synthetic dataset")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args()
    cfg = Config.preset(args.preset)
    if args.size:
        cfg.model.image_size = args.size
    if args.batch_size:
        cfg.train.batch_size = args.batch_size
    device = resolve_device(args.device)
    s = cfg.model.image_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.n, cfg.model.channels, s, s), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        ds = write_dataset(Path(tmp) / "ds", images)
        base = baseline(cfg, images, args.steps, device)
        opt_rate, data_share = optimised(cfg, ds, args.steps, device)
    tricks = ["device-resident uint8", "device flips"]
    tricks += ["channels-last"] if training_channels_last(cfg, device) else []
    tricks += ["bf16 autocast"] if training_bf16(cfg, device) else []
    rows = [["baseline (DataLoader, host float32 flips, fp32)", base, 1.0, ""],
            [f"astrovader ({', '.join(tricks)})", opt_rate, opt_rate / base, f"{100 * data_share:.2f}%"]]
    table = markdown_table(["training loop", "images/s", "ratio", "data pipeline share"], rows)
    print(f"preset {args.preset}, {s}px, batch {cfg.train.batch_size}, {args.steps} steps, device {device}")
    print(table)
    if not args.no_record:
        append_results(f"Training throughput ({args.preset} preset, {s}px, batch {cfg.train.batch_size})", table,
                       device)


if __name__ == "__main__":
    main()
