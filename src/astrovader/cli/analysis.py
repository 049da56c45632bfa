"""Analysis commands: report (the paper's section 5 as one HTML page) and choose-k (the number of components)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from astrovader.cli import CLIError
from astrovader.cli.options import (
    add_allow_unfinished,
    add_dataset,
    add_device,
    add_overwrite,
    add_quiet,
    add_run,
    positive_int,
)

if TYPE_CHECKING:
    from astrovader.runs import Run


def _float_list(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 0.1,0.5,0.9; got {text!r}") from None
    if not vals or any(not 0 <= v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"cuts must be probabilities in [0, 1), got {text!r}")
    return vals


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated component numbers (e.g. 3,7), got {text!r}") \
            from None


def _gz_cuts(items: list[str]) -> dict[str, float]:
    from astrovader.analysis.metrics import GZ_DEFAULT_CUTS

    out: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in GZ_DEFAULT_CUTS:
            raise CLIError(f"--gz-cut expects KEY=VALUE with KEY one of {', '.join(GZ_DEFAULT_CUTS)}; got {item!r}")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise CLIError(f"--gz-cut {item!r}: {value!r} is not a number") from None
    return out


def _dataset_arg(run: Run, dataset: str | None) -> str:
    """DATASET may be omitted: the run directory records the dataset it was trained on."""
    if dataset:
        return dataset
    from astrovader.runs import DATASET_NOTE

    recorded = run.training_dataset
    if recorded is not None:
        return str(recorded)
    raise CLIError(f"no DATASET given and {run.path / DATASET_NOTE} does not record one")


def cmd_report(args: argparse.Namespace) -> int:
    from astrovader.analysis.report import make_report
    from astrovader.runs import Run

    if args.max_images is not None and args.max_images < 1:
        raise CLIError("--max-images must be >= 1")
    run = Run.open(args.run_dir, args.device, allow_unfinished=args.allow_unfinished)
    out = make_report(run, args.dataset, args.out_dir, split=args.split,
                      cuts=args.cuts, non_morphological=args.non_morphological, label_column=args.label_column,
                      max_images=args.max_images, progress=not args.quiet, gz_cuts=_gz_cuts(args.gz_cut),
                      seed=args.seed, device=args.device, allow_unfinished=args.allow_unfinished, dpi=args.dpi,
                      vector=args.vector, command=args.command_line, overwrite=args.overwrite,
                      n_realism=args.realism)
    print(f"wrote {out} (open it in a browser; figures/ and tables/ beside it)")
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from astrovader.analysis.describe import DescribeSettings, describe_run
    from astrovader.runs import Run

    settings = DescribeSettings(n_core=args.core, max_members=args.members, n_detailed=args.detailed, seed=args.seed)
    run = Run.open(args.run_dir, args.device, allow_unfinished=args.allow_unfinished)
    desc = describe_run(run, args.dataset, args.out, split=args.split, max_images=args.max_images,
                        label_column=args.label_column, settings=settings, device=args.device,
                        allow_unfinished=args.allow_unfinished, overwrite=args.overwrite,
                        command=args.command_line, names=args.names, progress=not args.quiet)
    for line in desc.sentences():
        print(line)
    flagged = desc.non_morphological
    print(f"wrote {args.out} ({len(desc.table)} components) and the per-galaxy measurements beside it")
    if flagged:
        print(f"flagged as not morphological: {', '.join(map(str, flagged))} (the report treats them so; "
              "override with report --non-morphological)")
    return 0


def cmd_choose_k(args: argparse.Namespace) -> int:
    import numpy as np

    from astrovader.analysis.choose_k import choose_k, plot_choose_k, sweep_k
    from astrovader.data.dataset import open_dataset
    from astrovader.data.selection import select_rows
    from astrovader.inference import infer
    from astrovader.runs import Run

    if args.repeats < 1 or args.batch < 2 or args.max_components < 1:
        raise CLIError("--repeats must be >= 1, --batch >= 2 and --max-components >= 1")
    if not 0 < args.threshold < 1:
        raise CLIError("--threshold must lie in (0, 1)")
    run = Run.open(args.run_dir, args.device, allow_unfinished=args.allow_unfinished)
    out = Path(args.out) if args.out else run.path / "choose_k.png"
    if out.exists() and not args.overwrite:
        raise CLIError(f"{out}: already exists; pass --overwrite to replace it, or name another file with --out")
    cfg, net = run.config, run.network
    ds = open_dataset(_dataset_arg(run, args.dataset))
    rows = select_rows(ds, args.split, args.max_images, args.seed)
    if len(rows) == 0:
        raise CLIError("no images selected: the dataset (or the chosen split) is empty")
    latents = infer(net, ds, rows=rows, reconstruct=False, progress=not args.quiet).mu
    res = choose_k(latents, max_components=args.max_components, repeats=args.repeats, batch=args.batch,
                   threshold=args.threshold, weight_concentration_prior=args.concentration, seed=args.seed,
                   covariance_type=args.covariance, progress=not args.quiet)
    print(f"components with weight > {args.threshold:g} over {args.repeats} mini-batches of "
          f"{min(args.batch, len(latents))} latent means:")
    for k, n in res.distribution().items():
        print(f"  K = {k:3d}: {n:3d} {'#' * n}")
    print(f"consensus K = {res.consensus} (the model was trained with K = {cfg.model.n_components})")
    sweep = None
    if args.sweep:
        lo, hi = 2, max(args.max_components, 2)
        sweep = sweep_k(latents, range(lo, hi + 1), seed=args.seed, covariance_type=args.covariance)
        print(sweep.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        best = sweep.loc[np.nanargmax(sweep["calinski_harabasz"].to_numpy()), "k"]
        print(f"highest Calinski-Harabasz at K = {best}; read together with the silhouette and BIC columns")
    plot_choose_k(res, out, sweep)
    print(f"wrote {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    _register_report(sub)
    _register_describe(sub)
    _register_choose_k(sub)


def _register_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="HTML report of a trained run: the paper's section 5 analyses",
                       description="Reconstructions (random, best, worst), component statistics (Table 2), "
                       "component overlap (Figure 5), members and secondary labels (Figures 6-8), the latent "
                       "map (UMAP) and latent histograms, comparison with labels or Galaxy Zoo vote fractions "
                       "(Figures 13-14), training history (Figure 2) and synthetic galaxies, opened by a "
                       "description of every component; written to OUT_DIR/report.html, a self-contained page "
                       "that opens offline.")
    add_run(p)
    p.add_argument("dataset", metavar="DATASET",
                   help="dataset directory (the one trained on, or another with the same image size)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output directory for report.html, figures/, tables/")
    p.add_argument("--split", metavar="NAME", default=None,
                   help="use only catalogue rows with this split value; 'all' for every row (default: the test "
                   "rows when the catalogue has a split column with some, else all rows, said prominently)")
    p.add_argument("--dpi", type=positive_int("--dpi"), default=110, metavar="DPI",
                   help="resolution of the PNG figures (default 110; 300 for print)")
    p.add_argument("--vector", nargs="+", choices=("pdf", "svg"), default=(), metavar="FORMAT",
                   help="also write every figure as pdf and/or svg beside its PNG")
    p.add_argument("--realism", type=int, default=300, metavar="N",
                   help="measure N synthetic galaxies (with the sky noise) against N held-out real ones, as "
                        "`benchmark realism` does (default 300; 0 skips that section)")
    p.add_argument("--cuts", type=_float_list, default=(0.1, 0.5, 0.9), metavar="P1,P2,...",
                   help="probability cut-offs for the occupancy table (default 0.1,0.5,0.9)")
    p.add_argument("--non-morphological", type=_int_list, default=None, metavar="C1,C2,...",
                   help="components grouping galaxies by something other than shape (e.g. companions); their "
                   "members get secondary labels from the other components (default: the components that "
                   "astrovader describe flags; give an empty string for none)")
    p.add_argument("--label-column", default=None,
                   help="catalogue column with class labels (default: true_class, gz1_label or label if present)")
    p.add_argument("--gz-cut", action="append", default=[], metavar="KEY=VALUE",
                   help="Galaxy Zoo clean-sample cut, e.g. --gz-cut smooth=0.5 (keys: total_votes, smooth, "
                   "featured, artifact, edge_on, bar); repeatable")
    p.add_argument("--max-images", type=int, default=None, metavar="N",
                   help="analyse a random subset of at most N images (default: all selected rows)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random selections (default 0)")
    add_device(p)
    add_allow_unfinished(p)
    add_overwrite(p, help="replace OUT_DIR if it already holds files")
    add_quiet(p, "no progress messages")
    p.set_defaults(func=cmd_report)


def _register_describe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("describe", help="what each component is: morphology of its members, in numbers and words",
                       description="Measure the members of every component (photutils: R50, R90, axis ratio, "
                       "surface brightness, second sources in the stamp; statmorph: concentration, asymmetry, "
                       "Gini, M20, Sersic index), summarise their labels where the dataset has them, print one "
                       "sentence per component and flag components grouped by companions or orientation. "
                       "Writes OUT (.csv or .parquet, one row per component) and OUT_galaxies beside it.")
    add_run(p)
    add_dataset(p)
    p.add_argument("out", metavar="OUT", help="description table, .csv or .parquet")
    p.add_argument("--split", metavar="NAME", default=None,
                   help="use only catalogue rows with this split value, e.g. test (default: all rows)")
    p.add_argument("--max-images", type=int, default=None, metavar="N", help="use a random subset of at most N")
    p.add_argument("--label-column", metavar="COLUMN", default=None,
                   help="catalogue column with class labels (default: true_class, gz1_label or label if present)")
    p.add_argument("--core", type=positive_int("--core"), default=100, metavar="N",
                   help="most probable members measured as each component's core (default 100)")
    p.add_argument("--members", type=positive_int("--members"), default=400, metavar="N",
                   help="random members per component measured with photutils (default 400)")
    p.add_argument("--detailed", type=positive_int("--detailed"), default=60, metavar="N",
                   help="of those, members also measured with statmorph, about 0.2 s each (default 60)")
    p.add_argument("--seed", type=int, default=0, metavar="SEED", help="seed for the random members (default 0)")
    add_device(p)
    add_allow_unfinished(p)
    p.add_argument("--names", metavar="JSON", default=None,
                   help="component_names.json exported from the explorer page: adds a component_name column")
    add_overwrite(p, help="replace OUT if it exists")
    add_quiet(p)
    p.set_defaults(func=cmd_describe)


def _register_choose_k(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("choose-k", help="estimate the number of mixture components from a run's latent space",
                       description="Fit Dirichlet-process Bayesian Gaussian mixtures (small concentration prior, "
                       "many components) to random mini-batches of latent means and count the components whose "
                       "weight exceeds a threshold; prints the distribution and its mode, and writes a figure.")
    add_run(p)
    p.add_argument("dataset", nargs="?", default=None,
                   help="dataset directory (default: the one recorded in RUN_DIR/dataset.txt)")
    p.add_argument("--max-components", type=int, default=20, help="components per fit (default 20)")
    p.add_argument("--repeats", type=int, default=20, help="number of mini-batch fits (default 20)")
    p.add_argument("--batch", type=int, default=2000, help="latent means per fit (default 2000)")
    p.add_argument("--threshold", type=float, default=0.02, help="weight a component needs to count (default 0.02)")
    p.add_argument("--concentration", type=float, default=1e-3,
                   help="Dirichlet-process weight concentration prior (default 1e-3; smaller prunes harder)")
    p.add_argument("--covariance", choices=("full", "diag", "tied", "spherical"), default="full",
                   help="covariance type of the mixture components (default full; diag is faster)")
    p.add_argument("--sweep", action="store_true",
                   help="also tabulate Calinski-Harabasz, simplified silhouette, log-likelihood and BIC of "
                   "GaussianMixture fits for K = 2..MAX_COMPONENTS")
    p.add_argument("--split", default=None, help="use only catalogue rows with this split value")
    p.add_argument("--max-images", type=int, default=None, metavar="N", help="use at most N images")
    p.add_argument("--out", default=None, help="figure path (default: RUN_DIR/choose_k.png)")
    add_overwrite(p, help="replace the figure if it exists")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_device(p)
    add_allow_unfinished(p)
    add_quiet(p)
    p.set_defaults(func=cmd_choose_k)
