"""Every benchmark in one command: training, inference, generation and FLOPs, then a summary.

Made for a lent GPU machine, where a session has minutes, not hours: settings are small on a CPU (demo
preset) and add the paper preset (128 px, batch 180) when CUDA is present. Each benchmark runs as its own
process, exactly as it would by hand, so each appends its own block (with its own command line) to
RESULTS.md. On a remote machine whose working tree is thrown away, ``--out DIR`` copies the summary and
RESULTS.md to DIR so that they come back:

    python benchmarks/run_all.py                     # CPU: about two minutes on 2 cores
    python benchmarks/run_all.py --out "$OUT"        # on the device machine
    python benchmarks/run_all.py --quick --no-record # a smoke run of every script
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def plan(cuda: bool, quick: bool) -> list[tuple[str, list[str]]]:
    """(name, argv) of each benchmark run; the paper preset only where a GPU makes it affordable."""
    if quick:
        return [("train demo", ["bench_train.py", "--steps", "3", "--n", "512", "--device", "cpu"]),
                ("predict demo", ["bench_predict.py", "--n", "512", "--batch-size", "256", "--device", "cpu"]),
                ("generate demo", ["bench_generate.py", "--seconds", "0.2", "--devices", "cpu"]),
                ("flops demo", ["flops.py", "--steps", "3", "--n", "512", "--device", "cpu"]),
                ("preset cost demo", ["preset_cost.py", "--presets", "demo", "--n", "256", "--device", "cpu"])]
    runs = [("train demo (cpu)", ["bench_train.py", "--steps", "20", "--device", "cpu"]),
            ("predict demo (cpu)", ["bench_predict.py", "--n", "8192", "--device", "cpu"]),
            ("generate demo (cpu)", ["bench_generate.py", "--seconds", "1", "--devices", "cpu"]),
            ("flops demo (cpu)", ["flops.py", "--steps", "20", "--device", "cpu"]),
            ("preset cost (cpu)", ["preset_cost.py", "--presets", "demo,sdss64-k12", "--n", "1024",
                                   "--device", "cpu"])]
    if cuda:
        runs += [("train demo (cuda)", ["bench_train.py", "--steps", "50", "--device", "cuda"]),
                 ("train paper (cuda)", ["bench_train.py", "--preset", "paper", "--steps", "30", "--n", "8192",
                                         "--device", "cuda"]),
                 ("predict paper (cuda)", ["bench_predict.py", "--preset", "paper", "--n", "16384",
                                           "--device", "cuda"]),
                 ("generate demo 128px (cuda)", ["bench_generate.py", "--size", "128", "--seconds", "2",
                                                 "--devices", "cuda"]),
                 ("preset cost (cuda)", ["preset_cost.py", "--presets", "simulated,sdss64-k12,gz2-64,paper",
                                         "--n", "4096", "--device", "cuda"]),
                 ("flops demo+paper (cuda)", ["flops.py", "--presets", "demo,paper", "--steps", "30",
                                              "--n", "8192", "--device", "cuda"])]
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny settings: checks that every script runs")
    ap.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--out", default=None, help="copy summary.md and RESULTS.md here (e.g. $OUT)")
    ap.add_argument("--timeout", type=float, default=540, help="seconds allowed per benchmark (default 540)")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    summary: list[str] = [f"# run_all on {torch.cuda.get_device_name() if cuda else 'CPU only'} "
                          f"({os.cpu_count()} cores, torch {torch.__version__})\n"]
    failures = 0
    for name, argv in plan(cuda, args.quick):
        if args.no_record:
            argv = argv + (["--no-save"] if argv[0] == "bench_generate.py" else ["--no-record"])
        cmd = [sys.executable, str(HERE / argv[0]), *argv[1:]]
        print(f"== {name}: {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=HERE.parent)
            ok, text = res.returncode == 0, res.stdout + (res.stderr[-3000:] if res.returncode else "")
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            ok, text = False, out + f"\nTIMED OUT after {args.timeout:.0f} s"
        secs = time.perf_counter() - t0
        failures += not ok
        print(text, flush=True)
        summary.append(f"## {name} — {'ok' if ok else 'FAILED'} in {secs:.0f} s\n\n`{' '.join(argv)}`\n\n"
                       f"{text.strip()}\n")
    report = "\n".join(summary)
    print("\n" + "=" * 80 + "\nSUMMARY\n" + "=" * 80 + "\n" + report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.md").write_text(report)
        if (HERE / "RESULTS.md").exists():
            shutil.copy(HERE / "RESULTS.md", out / "RESULTS.md")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
