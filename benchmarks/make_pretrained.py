"""Package a GZ1 benchmark run as a pretrained model shipped inside astrovader (src/astrovader/pretrained/NAME).

The run must come from `astrovader benchmark gz1` in its default held-out mode: the model was fitted on 70% of the
GZ1 galaxies, and the card records its scores (and the baselines') on the 30% it never saw, the stamp recipe its
inputs need, and each component's make-up on the galaxies it was fitted on (its majority GZ1 class).

    python benchmarks/make_pretrained.py BENCH_OUT gz1-k3 0 sdss64-k3-gz1 --preset sdss64-k3
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from astrovader import __version__
from astrovader.benchmark import GZ1_CLASS_NAMES, GZ1_CLASSES
from astrovader.config import get_preset
from astrovader.data.dataset import Dataset, atomic_write_json
from astrovader.inference import infer
from astrovader.runs import CONFIG, WEIGHTS, Run, weights_sha256

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "astrovader" / "pretrained"
LIMITS = ("Trained on {n_fit:,} Galaxy Zoo 1 SDSS galaxies (gri cut-outs at one fixed pixel scale, made into 64 px "
          "grey stamps framed on each galaxy). It knows bright, resolved, low-redshift SDSS galaxies as seen "
          "by Galaxy Zoo; other surveys, depths, pixel scales, bands or redshifts are outside what it saw. Its "
          "components follow the morphology only roughly (held-out scores below); train your own model for a "
          "catalogue that matters.")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bench", type=Path, help="output folder of `astrovader benchmark gz1`")
    p.add_argument("task", help="gz1-k12 or gz1-k3")
    p.add_argument("seed", type=int)
    p.add_argument("name", help="the pretrained model's name")
    p.add_argument("--preset", required=True, help="the preset the run's settings came from (its stamp recipe)")
    p.add_argument("--label", action="append", default=[], metavar="C=TEXT",
                   help="name component C by what its members look like (e.g. 1='pairs: a galaxy and a companion'), "
                   "ahead of its majority class; repeatable")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args()

    record = json.loads((args.bench / args.task / f"seed{args.seed}.json").read_text())
    settings = record["settings"]
    if not settings.get("preprocessing", {}).get("held_out"):
        sys.exit("the benchmark ran with --all-rows: no held-out scores to ship")
    run = args.bench / "runs" / args.task / f"seed{args.seed}"
    fit_set = Dataset(Path((run / "dataset.txt").read_text().strip()))
    preset = get_preset(args.preset)

    dest = PACKAGE / args.name
    if dest.exists():
        if not args.overwrite:
            sys.exit(f"{dest} exists; pass --overwrite")
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copy(run / CONFIG, dest / CONFIG)
    shutil.copy(run / WEIGHTS, dest / WEIGHTS)

    # each component's make-up on the galaxies the model was fitted on (never the held-out ones)
    net = Run.open(dest, "cpu").network
    labels = fit_set.catalog["gz1_class"].map(GZ1_CLASSES).to_numpy(np.int64)
    component = infer(net, fit_set.load()).labels
    k = net.cfg.model.n_components
    components, names = {}, {}
    for c in range(k):
        members = labels[component == c]
        counts = np.bincount(members, minlength=len(GZ1_CLASS_NAMES))
        share = counts / max(1, len(members))
        top = int(share.argmax())
        components[str(c)] = {"fit_members": int(len(members)),
                              **{f"share_{n}": round(float(v), 3) for n, v in zip(GZ1_CLASS_NAMES, share, strict=True)}}
        names[str(c)] = {"name": f"{GZ1_CLASS_NAMES[top].replace('_', '-')} {share[top]:.0%}" if len(members) else ""}
    for item in args.label:
        c, text = item.split("=", 1)
        names[c]["name"] = f"{text} ({names[c]['name']})" if names[c]["name"] else text
    weights = weights_sha256(dest)
    atomic_write_json(dest / "component_names.json", {"weights": weights, "components": names})

    methods = record["methods"]
    metric_keys = ("accuracy", "nmi", "ari", "purity", "knn_accuracy", "linear_probe", "recon_mse")
    held_out = {m: {key: round(r[key], 4) for key in metric_keys if key in r} for m, r in methods.items()}
    n_images = settings["n_images"]
    n_test = n_images - len(fit_set)  # the held-out galaxies: every one the model was not fitted on
    card = {
        "name": args.name,
        "summary": (f"K = {k} model of 64 px SDSS galaxy stamps (Galaxy Zoo 1), preset {args.preset}; held-out "
                    f"NMI {held_out['astrovader']['nmi']:.3f}, purity {held_out['astrovader']['purity']:.3f}"),
        "preset": args.preset,
        "stamps": {**preset.stamps, "crop_description": settings["preprocessing"]["crop"]},
        "trained_on": {"data": "Galaxy Zoo 1 SDSS cut-outs (gz1-sdss)", "n_fit": len(fit_set),
                       "classes": list(GZ1_CLASS_NAMES), "seed": args.seed,
                       "torch_threads": record["torch_threads"], "astrovader": __version__,
                       "torch": torch.__version__},
        "held_out": {"n": n_test, "of": n_images, "rule": "seeded, class-stratified 30% no method was fitted on",
                     "scores": held_out},
        "components": components,
        "weights_sha256": weights,
        "limits": LIMITS.format(n_fit=len(fit_set)),
    }
    atomic_write_json(dest / "card.json", card)
    size = sum(f.stat().st_size for f in dest.iterdir())
    print(f"wrote {dest} ({size / 1e6:.2f} MB): {card['summary']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
