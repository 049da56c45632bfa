"""Deblending measured on simulated galaxies with known companions (issue: "Reading the clusters").

    python benchmarks/deblend.py RUN_DIR SIMULATED_DATASET [--n 200]

RUN_DIR is a run trained on SIMULATED_DATASET (e.g. the demo's ``astrovader-demo/run`` and
``astrovader-demo/data``). Prints the JSON summary of ``astrovader.benchmark.deblending_on_simulation``.
"""

import argparse
import json

import torch

from astrovader.benchmark import deblending_on_simulation

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("dataset")
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    res = deblending_on_simulation(args.run_dir, args.dataset, n=args.n)
    res["torch_threads"] = torch.get_num_threads()
    print(json.dumps(res, indent=2))
