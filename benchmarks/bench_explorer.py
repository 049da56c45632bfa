"""The cluster explorer at catalogue scale: page size, build time and how fast headless Chromium renders it.

    python benchmarks/bench_explorer.py RUN_DIR DATASET OUT_DIR [--repeats 3] [--no-append]

Builds OUT_DIR/explorer.html for every galaxy of DATASET (up to the page's 20,000-point limit), then opens it
from file:// in headless Chromium (chromium + chromedriver + selenium) ``--repeats`` times, each in a fresh
browser, and records the time from navigation until the page's own script has run (``data-ready``), i.e. the
map is drawn and every panel is live. Appends a table to benchmarks/RESULTS.md unless --no-append.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import append_results, markdown_table

from astrovader.analysis.explorer import write_explorer
from astrovader.data.dataset import open_dataset
from astrovader.runs import Run


def render_seconds(page: Path) -> float:
    from selenium import webdriver

    profile = tempfile.mkdtemp(prefix="bench-explorer-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1320,1000"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")))
    try:
        t0 = time.perf_counter()
        drv.get(page.resolve().as_uri())
        while drv.execute_script("return document.body.dataset.ready") != "yes":
            time.sleep(0.02)
        return time.perf_counter() - t0
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("dataset")
    ap.add_argument("out_dir")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    net = Run.open(args.run_dir).network
    ds = open_dataset(args.dataset)
    t0 = time.perf_counter()
    page = write_explorer(args.run_dir, ds, Path(args.out_dir) / "explorer.html")
    build = time.perf_counter() - t0
    size_mb = page.stat().st_size / 1e6
    renders = sorted(render_seconds(page) for _ in range(args.repeats))
    rows = [[f"{len(ds):,} galaxies, {ds.image_size} px, K = {net.cfg.model.n_components}", f"{size_mb:.1f}",
             f"{build:.0f}", f"{renders[0]:.2f} / {renders[len(renders) // 2]:.2f} / {renders[-1]:.2f}"]]
    table = markdown_table(["page", "size (MB)", "build (s)", "render in headless Chromium, min / median / max (s)"],
                           rows)
    print(table)
    if not args.no_append:
        append_results(f"Cluster explorer page ({Path(args.dataset).name})", table, torch.device("cpu"))


if __name__ == "__main__":
    main()
