"""Shared helpers for the benchmarks: device description and appending rows to RESULTS.md."""

from __future__ import annotations

import datetime as _dt
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def append_results(title: str, table: str, device: torch.device) -> None:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "python " + " ".join(sys.argv)
    block = (f"\n## {title}\n\n- date: {stamp}\n- device: {device_name(device)}\n- torch {torch.__version__}\n"
             f"- command: `{cmd}`\n\n{table}\n")
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEvery number with its command, date and machine. "
                           "Ratios are measured side by side in one run.\n")
    with RESULTS.open("a") as fh:
        fh.write(block)


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        out.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(out)
