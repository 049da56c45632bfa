"""FLOPs per image, the device's measured matrix-multiply rate, and the fraction of it that training and
inference achieve.

Images/s alone cannot say whether a loop is good: it has to be set against how much arithmetic an image
costs and how fast the device multiplies matrices. This script counts the model's FLOPs with
``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products, 2 FLOPs per
multiply-add; element-wise work such as activations, pooling and up-sampling is not counted), times a large
matrix product in fp32 and, where the device has fast bf16, in bf16, and times the optimised training step
(``bench_train.optimised``: ``train._make_step`` on device-resident batches) and inference
(``bench_predict``: ``predict_dataset`` end to end, and ``infer_batch`` alone). The achieved FLOP/s are
reported as a fraction of the matmul rate of the precision the path actually runs in. The same numbers
feed the scaling model in docs/scaling.md.

    python benchmarks/flops.py                                            # demo timed, paper counted
    python benchmarks/flops.py --presets paper --steps 3 --batch-size 16 --n 256   # paper timed on a CPU
    python benchmarks/flops.py --presets demo,paper --device cuda         # on a GPU
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_predict  # noqa: E402  (benchmark siblings, importable from any working directory)
import bench_train  # noqa: E402
from common import append_results, device_name, markdown_table  # noqa: E402

from astrovader.compute import fast_bf16, resolve_device, training_bf16  # noqa: E402
from astrovader.config import Config  # noqa: E402
from astrovader.model import AstroVaDErNet, vade_losses  # noqa: E402


def count_flops(cfg: Config, batch: int = 2) -> dict[str, float]:
    """FLOPs per image of the forward pass (encode + decode of z, what inference runs: predict decodes mu,
    which costs the same) and of one training step (forward, VaDE loss in a GMM phase, L2, backward).

    Counted in fp32 on the CPU; the count does not depend on device or precision."""
    torch.manual_seed(0)
    net = AstroVaDErNet(cfg)
    m = cfg.model
    x = torch.rand(batch, m.channels, m.image_size, m.image_size)
    with torch.no_grad(), FlopCounterMode(display=False) as fwd:
        net(x, sample=False)
    with FlopCounterMode(display=False) as step:
        out = net(x, sample=True)
        terms = vade_losses(net, x, out, cfg.loss, gmm_phase=True)
        loss = (terms["recon"] + terms["kl_gmm"]).mean() + cfg.loss.l2 * net.l2_penalty()
        loss.backward()
    return {"forward": fwd.get_total_flops() / batch, "train_step": step.get_total_flops() / batch}


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int | None = None, seconds: float = 1.0) -> float:
    """Measured FLOP/s of an (n x n) @ (n x n) product, repeated for about ``seconds`` after a warm-up:
    the practical ceiling for dense arithmetic on this device, in this precision and thread count."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    torch.matmul(a, b, out=c)
    bench_train._sync(device)
    reps, t0 = 0, time.perf_counter()
    while True:
        torch.matmul(a, b, out=c)
        reps += 1
        if reps % 4 == 0 or device.type != "cuda":
            bench_train._sync(device)
            if time.perf_counter() - t0 >= seconds:
                break
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def measure(cfg: Config, device: torch.device, steps: int, n: int, predict_batch: int) -> dict[str, float]:
    """Optimised training images/s and inference images/s (end to end and model-only) for one config."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ds = bench_predict.make_dataset(tmp / "ds", cfg, max(n, 2 * cfg.train.batch_size))
        train_rate, _ = bench_train.optimised(cfg, ds, steps, device)
        net = bench_predict.make_net(cfg, device)
        infer_e2e = bench_predict.time_optimised(net, ds, tmp, device, predict_batch)
        infer_model = bench_predict.time_model_only(net, ds, device, predict_batch)
    return {"train": train_rate, "infer_e2e": infer_e2e, "infer_model": infer_model}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="demo", help="comma-separated presets to time (default demo)")
    ap.add_argument("--count", default="demo,paper", help="presets whose FLOPs are counted (default demo,paper)")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps (default 20)")
    ap.add_argument("--batch-size", type=int, default=None, help="training batch (default: the preset's)")
    ap.add_argument("--predict-batch", type=int, default=None, help="inference batch (default 1024, or "
                    "--batch-size when given)")
    ap.add_argument("--n", type=int, default=4096, help="images in the synthetic dataset (default 4096)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    predict_batch = args.predict_batch or args.batch_size or 1024

    counted = {p: count_flops(Config.preset(p)) for p in args.count.split(",") if p}
    count_rows = [[p, Config.preset(p).model.image_size, f["forward"] / 1e9, f["train_step"] / 1e9,
                   f["train_step"] / f["forward"]] for p, f in counted.items()]
    count_table = markdown_table(["preset", "px", "forward GFLOP/image", "training step GFLOP/image",
                                  "step / forward"], count_rows)

    rates = {"fp32": matmul_rate(device, torch.float32)}
    if fast_bf16(device):
        rates["bf16"] = matmul_rate(device, torch.bfloat16)
    rate_table = markdown_table(["matmul", "measured TFLOP/s"], [[k, v / 1e12] for k, v in rates.items()])

    rows: list[list[object]] = []
    for preset in [p for p in args.presets.split(",") if p]:
        cfg = Config.preset(preset)
        if args.batch_size:
            cfg.train.batch_size = args.batch_size
        flops = counted.get(preset) or count_flops(cfg)
        got = measure(cfg, device, args.steps, args.n, predict_batch)
        train_dtype = "bf16" if training_bf16(cfg, device) else "fp32"
        infer_dtype = "fp32"  # inference's default precision (bf16 is opt-in: bench_precision.py)
        for what, key, per_image, dtype in (
                (f"training step (batch {cfg.train.batch_size})", "train", flops["train_step"], train_dtype),
                (f"inference, predict_dataset end to end (batch {predict_batch})", "infer_e2e", flops["forward"],
                 infer_dtype),
                (f"inference, model only (batch {predict_batch})", "infer_model", flops["forward"], infer_dtype)):
            achieved = got[key] * per_image
            rows.append([preset, what, dtype, got[key], achieved / 1e12, f"{100 * achieved / rates[dtype]:.1f}%"])
        print(f"{preset}: " + ", ".join(f"{k} {v:.1f} img/s" for k, v in got.items()), flush=True)
    achieved_table = markdown_table(["preset", "path", "precision", "images/s", "achieved TFLOP/s",
                                     "of matmul rate"], rows)

    out = (f"FLOPs per image (FlopCounterMode: conv + matmul, 2 per MAC)\n\n{count_table}\n\n"
           f"Matrix-multiply rate of {device_name(device)}\n\n{rate_table}\n\n"
           f"Achieved\n\n{achieved_table}")
    print(out)
    if not args.no_record and rows:
        load = os.getloadavg()[0]
        append_results(f"FLOPs and achieved fraction of the matmul rate ({args.presets}; load average {load:.1f} "
                       f"on {os.cpu_count()} cores)", out, device)


if __name__ == "__main__":
    main()
