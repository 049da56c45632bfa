"""Ingest throughput (images/s) for a JPEG folder, workers=1 vs workers=2 side by side in one run.

    python benchmarks/bench_ingest.py [--src ../shared/data/gz1-sdss] [--workers 1 2] [--limit N] [--record]

Each configuration ingests the same files (paper preprocessing: crop 192/256, grey, 128 px) into a fresh
temporary dataset; the time includes worker start-up, decoding, writing and the final commit.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from astrovader.data.ingest import ingest_folder
from astrovader.data.sources import find_images

DEFAULT_SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "gz1-sdss"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="image folder (default: shared gz1-sdss)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    ap.add_argument("--limit", type=int, help="use only the first N images (copied to a temporary folder)")
    ap.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args()
    if not args.src.is_dir():
        raise SystemExit(f"{args.src}: not found (the shared data folder is needed for this benchmark)")
    with tempfile.TemporaryDirectory() as tmp:
        src = args.src
        if args.limit:
            src = Path(tmp) / "src"
            src.mkdir()
            for f in find_images(args.src)[: args.limit]:
                shutil.copy(f, src / f.name)
        n = len(find_images(src))
        rows = []
        for w in args.workers:
            out = Path(tmp) / f"ds{w}"
            t0 = time.perf_counter()
            rep = ingest_folder(src, out, workers=w, progress=False)
            dt = time.perf_counter() - t0
            rows.append([w, rep.n_written, round(dt, 2), round(rep.n_written / dt, 1)])
            shutil.rmtree(out)
    base = rows[0][3]
    header = ["workers", "images", "seconds", "images/s", "speed-up"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(str(v) for v in [*r, f"{r[3] / base:.2f}x"]) + " |")
    table = "\n".join(lines)
    print(f"ingest {n} images from {args.src} on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f})")
    print(table)
    if args.record:
        from common import RESULTS  # benchmarks/common.py (imports torch, so only when recording)

        with RESULTS.open("a") as fh:
            fh.write(f"\n## Ingest throughput ({args.src.name})\n\n- {os.cpu_count()} CPUs, load average "
                     f"{os.getloadavg()[0]:.1f}\n- command: `python benchmarks/bench_ingest.py`\n\n{table}\n")


if __name__ == "__main__":
    main()
