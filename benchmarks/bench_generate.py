"""Generation throughput and peak memory.

Images per second of astrovader's batched generator (host-side sampling from per-block random streams,
channels-last decoder copy, bf16 autocast on GPUs, uint8 conversion on the device) for batch sizes
1..1024, against a straightforward loop that draws and decodes one image at a time through the public
``AstroVaDEr.decode``. Both run in the same process on the same model, so the ratios are side by side.

``--memory N`` also measures the peak resident memory of ``generate_to_dataset`` writing N images at
64 px with a small 64 px model, in a fresh subprocess (``resource.getrusage`` maxrss).

    python benchmarks/bench_generate.py                       # demo architecture, 32 px, random weights
    python benchmarks/bench_generate.py --run RUN_DIR         # a trained run
    python benchmarks/bench_generate.py --memory 200000       # + peak memory of 200k images at 64 px
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import torch

from astrovader import AstroVaDEr, Config
from astrovader.sampling import GenerationSpec, iter_generated

try:
    from common import append_results, markdown_table
except ImportError:  # run as a module
    from benchmarks.common import append_results, markdown_table

BATCH_SIZES = (1, 4, 16, 64, 256, 1024)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def baseline_loop(model: AstroVaDEr, seconds: float, seed: int = 0) -> float:
    """What a first script looks like: per image, draw c and z with NumPy, decode one image, convert."""
    g = model.net.gmm
    w = g.weights.detach().double().cpu().numpy()
    means = g.means.detach().double().cpu().numpy()
    sd = g.variances.detach().double().sqrt().cpu().numpy()
    rng = np.random.default_rng(seed)

    def one() -> np.ndarray:
        c = rng.choice(len(w), p=w / w.sum())
        z = rng.normal(means[c], sd[c]).astype(np.float32)
        return np.rint(model.decode(z[None])[0] * 255).astype(np.uint8)

    for _ in range(3):
        one()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        one()
        n += 1
    return n / (time.perf_counter() - t0)


def batched(model: AstroVaDEr, batch_size: int, seconds: float) -> float:
    """Images per second of ``iter_generated`` at one batch size (after one warm-up batch)."""
    spec = GenerationSpec(seed=0)
    it = iter_generated(model.net, 10**12, spec, batch_size=batch_size)
    next(it)
    _sync(model.device)
    n, t0 = 0, time.perf_counter()
    for _, imgs, _, _ in it:
        n += len(imgs)
        if time.perf_counter() - t0 >= seconds:
            break
    _sync(model.device)
    return n / (time.perf_counter() - t0)


MEMORY_SCRIPT = """
import resource, sys, time
from astrovader import AstroVaDEr, Config
from astrovader.sampling import generate_to_dataset
cfg = Config.resolve("demo", overrides=["model.image_size=64", "model.encoder_filters=[4]",
    "model.encoder_kernels=[3]", "model.decoder_filters=[4]", "model.decoder_kernels=[3]",
    "model.latent_dim=20", "model.n_components=12", "train.device=" + sys.argv[3]])
t0 = time.perf_counter()
generate_to_dataset(AstroVaDEr(cfg).net, sys.argv[1], int(sys.argv[2]), batch_size=1024, progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - t0)
"""


def peak_memory(n: int, device: str) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of a fresh process writing ``n`` 64 px images to a dataset."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        res = subprocess.run([sys.executable, "-c", textwrap.dedent(MEMORY_SCRIPT), f"{tmp}/ds", str(n), device],
                             capture_output=True, text=True, check=True, env=env)
    mib, secs = map(float, res.stdout.split())
    return mib, secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="trained run directory (default: demo architecture, random weights)")
    ap.add_argument("--size", type=int, default=32, help="image size of the default model (default 32)")
    ap.add_argument("--seconds", type=float, default=1.5, help="time per row (default 1.5)")
    ap.add_argument("--devices", default=None, help="comma-separated devices (default: cpu, plus cuda if present)")
    ap.add_argument("--memory", type=int, default=0, metavar="N",
                    help="also measure peak memory of generating N images at 64 px (e.g. 200000)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice); 1 gives stable numbers on a loaded machine")
    ap.add_argument("--no-save", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        if args.run:
            model = AstroVaDEr.load(args.run, device=dev)
            what = f"run {args.run}"
        else:
            model = AstroVaDEr(Config.resolve("demo", overrides=[f"model.image_size={args.size}"]), device=dev)
            what = "demo architecture, random weights"
        m = model.config.model
        base = baseline_loop(model, args.seconds)
        rows: list[list[object]] = [["one image at a time (Python loop, AstroVaDEr.decode)", round(base, 1), 1.0]]
        for bs in BATCH_SIZES:
            rate = batched(model, bs, args.seconds)
            rows.append([f"astrovader generator, batch {bs}", round(rate, 1), rate / base])
            print(f"{dev} batch {bs:>5}: {rate:10.1f} img/s  ({rate / base:.1f}x)", flush=True)
        table = markdown_table(["generator", "images/s", "ratio"], rows)
        load = os.getloadavg()[0]
        title = (f"Generation throughput ({what}, {m.image_size}px, {m.channels} channel(s), J={m.latent_dim}; "
                 f"load average {load:.1f} on {os.cpu_count()} cores)")
        print(f"\n## {title} on {dev}\n\n{table}\n")
        if not args.no_save:
            append_results(title, table, model.device)
    if args.memory:
        dev = devices[-1]
        mib, secs = peak_memory(args.memory, dev)
        table = markdown_table(["images", "image size", "peak RSS (MiB)", "seconds", "images/s"],
                               [[args.memory, "64x64x1", round(mib, 1), round(secs, 1), round(args.memory / secs)]])
        title = "Generation peak memory (generate_to_dataset, small 64 px model, batch 1024)"
        print(f"\n## {title}\n\n{table}\n")
        if not args.no_save:
            append_results(title, table, torch.device(dev))


if __name__ == "__main__":
    main()
