"""CPU inference and generation by memory layout and precision, side by side in one process.

Three modes run the same weights on the same images:

* before: the contiguous float32 network on whole batches (inference as it was up to 2026-12-04; for
  generation, the channels-last decoder in 4 MB chunks it already had, and the dataset writer's commit of
  2026-12-05, which joined its pending images into one array first);
* float32 (the default now): a channels-last inference copy in cache-sized chunks;
* bf16 (opt-in, ``--precision bf16``): the same under bf16 autocast.

Measured: ``predict`` from a dataset on disk to Parquet (64 px: the shipped sdss64-k12-gz1 weights; 128 px: the
paper preset, untrained weights, same cost), ``generate`` to a dataset, ``predict --dask local:N`` for N = 1, 2,
each as images/s and as a fraction of this CPU's matmul rate in that precision; then the agreement of float32 and
bf16 with "before" on real stamps (GZ1 with both shipped models; the demo with a demo run, when given).

    python benchmarks/bench_precision.py --gz1 ../shared/data/gz1-sdss --demo RUN_DIR DATA_DIR
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from astrovader import inference, sampling
from astrovader.config import Config
from astrovader.data.dataset import Dataset, DatasetWriter
from astrovader.inference import infer
from astrovader.predict import predict_dask, predict_dataset
from astrovader.runs import Run

try:
    import bench_predict
    import flops
    from common import append_results, markdown_table
except ImportError:  # imported as benchmarks.bench_precision
    from benchmarks import bench_predict, flops
    from benchmarks.common import append_results, markdown_table

MODES = ("before", "float32", "bf16")


_commit = DatasetWriter.commit


def _concatenating_commit(self: DatasetWriter) -> None:
    """The earlier release's commit: the pending images joined into one new array before they are written."""
    if len(self._pending_images) > 1:
        self._pending_images = [np.concatenate(self._pending_images)]
    _commit(self)


@contextlib.contextmanager
def before(generation: bool = False) -> Iterator[None]:
    """The code path of the earlier release: contiguous float32 network on whole batches for inference, the
    channels-last decoder in 4 MB chunks and a concatenating dataset commit for generation."""
    saved = inference.inference_channels_last, inference.cpu_chunk, DatasetWriter.commit
    if generation:
        inference.cpu_chunk = lambda act, item, cache_bytes=4 << 20: saved[1](act, item, cache_bytes)
        DatasetWriter.commit = _concatenating_commit
    else:
        inference.inference_channels_last = lambda device: False
        inference.cpu_chunk = lambda act, item, cache_bytes=0: 1 << 30
    try:
        yield
    finally:
        inference.inference_channels_last, inference.cpu_chunk, DatasetWriter.commit = saved


def _mode(mode: str, generation: bool = False) -> tuple[contextlib.AbstractContextManager, str]:
    return (before(generation) if mode == "before" else contextlib.nullcontext()), \
        ("float32" if mode == "before" else mode)


def rates(run: Callable[[str], int], rounds: int, generation: bool = False) -> dict[str, float]:
    """Median images/s of ``run(precision)`` per mode, the modes interleaved round by round (so a slow spell
    of the machine hits them alike), after one warm-up each."""
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(rounds + 1):
        for mode in MODES:
            ctx, precision = _mode(mode, generation)
            with ctx:
                t0 = time.perf_counter()
                n = run(precision)
                if r:  # round 0 warms up
                    times[mode].append(n / (time.perf_counter() - t0))
    return {m: statistics.median(v) for m, v in times.items()}


def predict_rates(net, ds: Dataset, tmp: Path, rounds: int) -> dict[str, float]:
    def run(precision: str) -> int:
        predict_dataset(net, ds, tmp / "p.parquet", batch_size=1024, progress=False, overwrite=True,
                        precision=precision)
        return len(ds)
    return rates(run, rounds)


def generate_rates(net, n: int, tmp: Path, rounds: int) -> dict[str, float]:
    def run(precision: str) -> int:
        shutil.rmtree(tmp / "g", ignore_errors=True)
        sampling.generate_to_dataset(net, tmp / "g", n, progress=False, precision=precision)
        return n
    return rates(run, rounds, generation=True)


def agreement(net, images: np.ndarray) -> list[list[object]]:
    """float32 and bf16 against "before" on the same images: share with the same component, max and 99.9th
    percentile of |probability change|, max |latent change| in units of the latents' spread, the largest
    relative change of the reconstruction error, and of 1024 generated images the largest pixel change."""
    with before():
        ref = infer(net, images)
    with before(generation=True):
        ref_gen = sampling.sample(net, 1024, sampling.GenerationSpec(seed=1))[0].astype(np.int16)
    spread = ref.mu.std(0).mean()
    rows = []
    for precision in ("float32", "bf16"):
        new = infer(net, images, precision=precision)
        gen = sampling.sample(net, 1024, sampling.GenerationSpec(seed=1, precision=precision))[0]
        dp = np.abs(new.probs - ref.probs)
        dg = np.abs(gen.astype(np.int16) - ref_gen)
        rows.append([precision, f"{(new.labels == ref.labels).mean():.4%}", f"{dp.max():.2e}",
                     f"{np.quantile(dp.max(1), 0.999):.2e}", f"{np.abs(new.mu - ref.mu).max() / spread:.2e}",
                     f"{np.max(np.abs(new.recon_mse / ref.recon_mse - 1)):.2e}",
                     f"{dg.max()} ({(dg > 0).mean():.2%} of pixels)"])
    return rows


_PEAK = """
import sys, torch
from astrovader.config import Config
from astrovader.model import AstroVaDErNet
from astrovader.predict import predict_dataset
torch.manual_seed(0)
net = AstroVaDErNet(Config.resolve("demo", overrides=sys.argv[3:])).eval()
predict_dataset(net, sys.argv[1], sys.argv[1] + ".parquet", stop=int(sys.argv[2]), progress=False, overwrite=True)
# this process's own high-water mark (getrusage's maxrss survives exec, so it would report the parent's)
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""
TINY = ["model.image_size=16", "model.encoder_filters=[8,8]", "model.encoder_kernels=[3,3]",
        "model.decoder_filters=[8,8]", "model.decoder_kernels=[3,3]", "model.latent_dim=8", "model.n_components=8"]


def peak_memory(tmp: Path, rows: int) -> list[list[object]]:
    """Peak resident memory (MB) of ``predict`` to Parquet over the first 1/10 and all of ``rows`` 16 px
    images (a small model: the memory a catalogue's length could add does not depend on the image size)."""
    import subprocess
    import sys

    from astrovader.data.dataset import DatasetWriter

    path = tmp / "rows"
    writer = DatasetWriter(path, 16, 1)
    rng = np.random.default_rng(0)
    for s in range(0, rows, 65536):
        n = min(65536, rows - s)
        writer.add(rng.integers(0, 256, (n, 1, 16, 16), dtype=np.uint8), pd.DataFrame({"id": np.arange(s, s + n)}))
    writer.close()
    out = []
    for n in (rows // 10, rows):
        res = subprocess.run([sys.executable, "-c", _PEAK, str(path), str(n), *TINY], capture_output=True,
                             text=True, check=True)
        out.append([f"predict {n:,} rows (16 px) to Parquet", f"{int(res.stdout.split()[-1]) / 1024:.0f} MB"])
    return out


def fraction_of_matmul(flops_per_image: float, rate: float, precision: str, peaks: dict[str, float]) -> str:
    """Achieved FLOP/s (forward pass FLOPs per image x images/s) over the measured matmul rate."""
    return f"{rate * flops_per_image / peaks[precision]:.1%}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096, help="images predicted at 64 px per round (default 4096)")
    ap.add_argument("--n128", type=int, default=512, help="images predicted at 128 px per round (default 512)")
    ap.add_argument("--n-generate", type=int, default=8192, help="images generated per round (default 8192)")
    ap.add_argument("--n-dask", type=int, default=16384, help="images per Dask run (default 16384; 0 skips)")
    ap.add_argument("--memory-rows", type=int, default=1_000_000,
                    help="rows of the peak-memory check (default 10^6; 0 skips)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per mode (default 3)")
    ap.add_argument("--gz1", type=Path, default=None, help="the gz1-sdss folder, for the agreement on GZ1")
    ap.add_argument("--n-gz1", type=int, default=4096, help="GZ1 galaxies for the agreement (default 4096)")
    ap.add_argument("--demo", nargs=2, type=Path, default=None, metavar=("RUN", "DATA"),
                    help="a demo run and its dataset, for the agreement on the demo's galaxies")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    peaks = {"float32": flops.matmul_rate(device, torch.float32), "bf16": flops.matmul_rate(device, torch.bfloat16)}
    net64 = Run.open("sdss64-k12-gz1", device="cpu").network
    paper = Config.preset("paper")
    net128 = bench_predict.make_net(paper, device)
    speed: list[list[object]] = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        for label, net, n in (("predict 64 px (sdss64-k12-gz1)", net64, args.n),
                              ("predict 128 px (paper)", net128, args.n128)):
            ds = bench_predict.make_dataset(tmp / f"ds{n}", net.cfg, n)
            r = predict_rates(net, ds, tmp, args.rounds)
            forward = flops.count_flops(net.cfg)["forward"]
            speed += [[label, m, f"{r[m]:.0f}", f"{r[m] / r['before']:.2f}x",
                       fraction_of_matmul(forward, r[m], "bf16" if m == "bf16" else "float32", peaks)] for m in MODES]
        r = generate_rates(net64, args.n_generate, tmp, args.rounds)
        speed += [["generate 64 px to a dataset", m, f"{r[m]:.0f}", f"{r[m] / r['before']:.2f}x", "-"] for m in MODES]
        if args.n_dask:
            ds = bench_predict.make_dataset(tmp / "dask", net64.cfg, args.n_dask)
            for workers in (1, 2):
                shutil.rmtree(tmp / "parts", ignore_errors=True)
                t0 = time.perf_counter()
                predict_dask("sdss64-k12-gz1", ds.path, tmp / "parts", scheduler=f"local:{workers}",
                             chunk_rows=max(args.n_dask // 8, 1), batch_size=1024, device="cpu", progress=False)
                rate = args.n_dask / (time.perf_counter() - t0)
                speed.append([f"predict --dask local:{workers} (64 px, 1 thread per worker)", "float32",
                              f"{rate:.0f}", "-",
                              fraction_of_matmul(flops.count_flops(net64.cfg)["forward"], rate, "float32", peaks)])
        memory = peak_memory(tmp, args.memory_rows) if args.memory_rows else []
    table = markdown_table(["path", "mode", "images/s", "vs before", "of matmul rate"], speed)
    if memory:
        table += "\n\n" + markdown_table(["peak resident memory", "MB"], memory)
    table += (f"\n\nmatmul rate (2048^2, {args.threads} threads): float32 {peaks['float32'] / 1e9:.0f} GFLOP/s, "
              f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s\n")
    agree: list[list[object]] = []
    if args.gz1:
        from astrovader.benchmark.tasks import gz1_tasks

        images = gz1_tasks(args.gz1, args.n_gz1, Path(tempfile.gettempdir()) / "astrovader-bench-cache",
                           log=lambda s: None, held_out=None)[0].images
        for model in ("sdss64-k12-gz1", "sdss64-k3-gz1"):
            net = Run.open(model, device="cpu").network
            agree += [[f"GZ1 ({len(images)} galaxies), {model}", *row] for row in agreement(net, images)]
    if args.demo:
        net = Run.open(args.demo[0], device="cpu").network
        images = Dataset(args.demo[1]).load()
        agree += [[f"demo ({len(images)} galaxies), {args.demo[0].name}", *row] for row in agreement(net, images)]
    if agree:
        table += "\n" + markdown_table(["images, model", "mode vs before", "same component", "max |dp|",
                                        "99.9th pct |dp| (per galaxy max)", "max |d mu| / latent spread",
                                        "max rel. change of recon_mse", "generated: max grey-level change"], agree)
    print(table)
    if not args.no_record:
        append_results("Inference by memory layout and precision (issue 32)", table, device)


if __name__ == "__main__":
    main()
