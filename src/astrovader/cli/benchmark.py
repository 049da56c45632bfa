"""``astrovader benchmark``: clustering quality against known classes, with baselines, over several seeds."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from astrovader.cli import CLIError
from astrovader.cli.options import add_overwrite, add_quiet, add_threads


def cmd_realism(args: argparse.Namespace) -> int:
    """``benchmark realism RUN DATASET``: synthetic galaxies against held-out real ones."""
    from astrovader.analysis.realism import format_realism, realism, write_realism
    from astrovader.data.dataset import open_dataset
    from astrovader.runs import Run

    if len(args.inputs) != 2:
        raise CLIError("benchmark realism needs RUN DATASET, e.g. astrovader benchmark realism run/ data/")
    if args.n is not None and args.n < 20:
        raise CLIError("--n must be >= 20")
    run, dataset = args.inputs
    out = Path(args.out or "benchmark-realism")
    if (out / "realism.json").exists() and not args.overwrite:
        raise CLIError(f"{out}: already holds realism.json; pass --overwrite to replace it, or choose another --out")
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(args.threads, 1))
    run = Run.open(run, "cpu")
    net = run.network
    ds = open_dataset(dataset)
    noise = None
    if args.noise:
        from astrovader.data.noise import dataset_sky_noise

        noise = dataset_sky_noise(ds)
    if not args.temperature > 0:
        raise CLIError(f"--temperature must be > 0, got {args.temperature}")
    res = realism(net, ds, n=args.n or 1000, split=args.split, seed=0, noise=noise, sampler=args.sampler,
                  temperature=args.temperature,
                  log=(lambda _m: None) if args.quiet else (lambda m: print(f"[realism] {m}", file=sys.stderr)))
    paths = write_realism(res, out, {**run.provenance(args.command_line), "DATASET": str(ds.path)})
    print(format_realism(res))
    print("\n".join(f"{p}" for p in paths))
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    if args.name == "realism":
        return cmd_realism(args)
    if args.inputs:
        raise CLIError(f"benchmark {args.name} takes no RUN/DATASET arguments (only `benchmark realism` does)")
    from astrovader.baselines import BASELINES
    from astrovader.benchmark import (
        CEILINGS,
        DATA_FOLDERS,
        GZ1_CROP,
        GZ1_DEROTATE,
        GZ1_FLUX_NORM,
        HELD_OUT,
        format_summary,
        gz1_stamps,
        resolve_data,
        run_benchmark,
    )
    from astrovader.config import ConfigError

    if args.threads is not None:
        if args.threads < 1:
            raise CLIError("--threads must be >= 1")
        import torch

        torch.set_num_threads(args.threads)
    if args.seeds < 1:
        raise CLIError("--seeds must be >= 1")
    if not args.epochs_scale > 0:
        raise CLIError("--epochs-scale must be > 0")
    if args.n is not None and args.n < 10:
        raise CLIError("--n must be >= 10")
    baselines = _choose(args.baselines, BASELINES, "--baselines")
    ceilings = _choose(args.ceilings, CEILINGS, "--ceilings")
    if args.name in DATA_FOLDERS:
        if args.data is None:
            raise CLIError(f"{args.name} needs --data DIR: the {DATA_FOLDERS[args.name]} "
                           "folder: the astrovader documentation's Benchmarks page says where to get it")
        source = resolve_data(args.name, args.data)
        if source is None or not source.is_dir():
            raise CLIError(f"{args.name}: data directory {args.data} does not exist")
    crop = GZ1_CROP if args.crop is None else args.crop
    derotate = GZ1_DEROTATE if args.derotate is None else args.derotate
    flux_norm = GZ1_FLUX_NORM if args.flux_norm is None else args.flux_norm
    if args.name == "gz1":
        try:
            gz1_stamps(crop, derotate, flux_norm)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    out = Path(args.out or f"benchmark-{args.name}")
    try:
        summary = run_benchmark(args.name, out, data=args.data, seeds=args.seeds, epochs_scale=args.epochs_scale,
                                overrides=args.overrides, n=args.n, baselines=baselines, crop=crop, derotate=derotate,
                                flux_norm=flux_norm, held_out=None if args.all_rows else HELD_OUT,
                                colour=args.colour, ceilings=ceilings,
                                only=[t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None,
                                log=(lambda _m: None) if args.quiet else print)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    print()
    print(format_summary(summary))
    print(f"\nper-seed results in {out}/<task>/seed<i>.json; summary in {out / 'summary.json'}")
    if args.json:
        print(json.dumps(summary, indent=1))
    healthy = all(row["all_ok"] for task in summary["tasks"].values() for row in task["methods"].values())
    return 0 if healthy or not args.strict else 1


def _choose(value: str, allowed: tuple[str, ...], option: str) -> list[str]:
    """A comma-separated subset of ``allowed``, or all / none."""
    if value in ("", "none"):
        return []
    chosen = list(allowed) if value == "all" else [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in allowed]
    if unknown:
        raise CLIError(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}, all or none")
    return chosen


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark", help="train and score clustering against known classes, with baselines, over seeds",
        description="Train AstroVaDEr end to end over seeds 0..N-1 on images with known classes and score "
        "Hungarian accuracy, NMI, ARI and purity (mean, std and worst seed) beside baselines trained on the same "
        "images: k-means on pixels, PCA(20)+GMM, the same network as a plain autoencoder + GMM and as a plain "
        "VAE + GMM. mnist: the 10,000 test digits (VaDE published 0.9446). gz1: SDSS galaxies, elliptical / "
        "spiral / edge-on, K=12 and K=3, plus 5-fold kNN accuracy of the latent means. simulated: built-in GalSim "
        "galaxies with companion fraction 0 and 0.2. sim-suite: eight simulated surveys (three the settings were tuned "
        "on, five held out: another galaxy population, companions, size, PSF, noise, stretch, pixel scale), each "
        "fitted on 70%% and scored on 30%%. Every run also reports NaNs and empty mixture components. "
        "Re-running with the same settings skips finished seeds. realism RUN DATASET: the run's synthetic galaxies "
        "against real galaxies of DATASET's test split (morphology distributions with their real-vs-real floor, a "
        "Frechet distance, a two-sample CNN, memorisation), written to --out.")
    p.add_argument("name", choices=("mnist", "gz1", "gz2-kaggle", "simulated", "sim-suite", "realism"),
                   help="which benchmark")
    p.add_argument("inputs", nargs="*", metavar="RUN DATASET", help="realism only: the run and a dataset with a split")
    p.add_argument("--split", default="test", help="realism: the real galaxies' split (default test)")
    add_overwrite(p, help="realism: replace the results in --out")
    p.add_argument("--noise", action="store_true",
                   help="realism: synthetic stamps with the sky noise of DATASET's stamps (as generate --noise)")
    p.add_argument("--sampler", choices=("prior", "posterior"), default="prior",
                   help="realism: draw latents from each component's prior Gaussian (as generate) or from a "
                   "density fitted to its encoded training members (the aggregate posterior)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="realism: scale of the latent draws' spread, as generate --temperature (default 1)")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="mnist: folder with the t10k IDX files; gz1: folder with labels.csv and images/ "
                   "(required for both; not needed for simulated)")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds, 0..N-1 (default 5)")
    p.add_argument("--out", metavar="DIR", default=None, help="output directory (default: benchmark-NAME)")
    p.add_argument("--epochs-scale", type=float, default=1.0, metavar="F",
                   help="multiply every phase's number of epochs by F (e.g. 0.1 for a smoke run)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of the benchmark's config, e.g. --set loss.gamma=0.01 (repeatable)")
    p.add_argument("--n", type=int, default=None,
                   help="use N images (mnist/gz1: a fixed random subset; simulated: how many to draw, default 3000)")
    p.add_argument("--baselines", default="all",
                   help="comma-separated subset of kmeans,pca_gmm,brightness_gmm,ae_gmm,vae_gmm, or all / none "
                   "(default all)")
    p.add_argument("--ceilings", default="all",
                   help="supervised references fitted with the labels on the same galaxies: comma-separated subset "
                   "of cnn,morph_logreg,knn_pixels, or all / none (default all; morph_logreg measures every stamp "
                   "with statmorph once, ~0.2 s a stamp, cached in OUT/cache)")
    p.add_argument("--crop", default=None, metavar="SPEC",
                   help="gz1: how each cut-out is framed before resizing to 64 px, as for `astrovader ingest`: a "
                        "centre-crop fraction (e.g. 0.4) or NxR90 (default 3xR90: 3 times each galaxy's measured "
                        "90%%-light radius, centred on it)")
    p.add_argument("--derotate", action=argparse.BooleanOptionalAction, default=None,
                   help="gz1: turn each galaxy's major axis horizontal (default: on)")
    p.add_argument("--flux-norm", action=argparse.BooleanOptionalAction, default=None,
                   help="gz1: scale each stamp to the same mean grey level, as `astrovader ingest --flux-norm` "
                        "(default: on)")
    p.add_argument("--tasks", default=None, metavar="NAMES",
                   help="run only these tasks, comma-separated (e.g. gz1-k3, or sim-sersic-cf30,sim-demo-cf0); "
                   "default: all of the benchmark's tasks")
    p.add_argument("--colour", action="store_true",
                   help="gz1: keep the three bands (gri) of each cut-out instead of their mean; sets model.channels=3")
    p.add_argument("--all-rows", action="store_true",
                   help="gz1, gz2-kaggle: fit and score every method on all galaxies (the old mode); by default "
                   "every method is fitted on 70%% and scored on a seeded, class-stratified 30%% none was fitted on")
    add_threads(p)
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 if any run had NaNs or an empty component")
    add_quiet(p, "print only the final table")
    p.set_defaults(func=cmd_benchmark)
