"""Generation commands: ``generate`` (synthetic galaxies) and ``explore`` (paper Figures 9-12)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from astrovader.cli import CLIError
from astrovader.cli.options import (
    add_allow_unfinished,
    add_device,
    add_overwrite,
    add_precision,
    add_quiet,
    add_run,
    positive_int,
)

if TYPE_CHECKING:
    from astrovader.runs import Run

FORMATS = ("dataset", "png", "fits")


def _format(args: argparse.Namespace) -> str:
    """Explicit --format, else from OUT's suffix (.png, .fits), else a dataset directory."""
    if args.format:
        return args.format
    suffix = Path(args.out).suffix.lower()
    fmt = {".png": "png", ".fits": "fits", ".fit": "fits", "": "dataset"}.get(suffix)
    if fmt is None:  # e.g. .fits.gz or .jpg: never silently write something else under that name
        raise CLIError(f"{args.out}: generate writes .png, .fits or a dataset directory (a name without a suffix), "
                       f"not {suffix}; rename the output, or pass --format dataset for a directory of that name")
    return fmt


def _clear_output(out: Path, fmt: str, overwrite: bool) -> None:
    """Refuse to replace what is at OUT unless --overwrite; never delete a dataset that generate did not write."""
    if not out.exists():
        return
    if fmt in ("png", "fits"):
        if out.is_dir():
            raise CLIError(f"{out}: is a directory; give a file name ending in .{fmt}")
        if not overwrite:
            raise CLIError(f"{out}: already exists; pass --overwrite to replace it, or choose another name")
        return
    from astrovader.data.dataset import Dataset, is_dataset

    if not out.is_dir():
        raise CLIError(f"{out}: is a file; a dataset output is a directory (or name a .png / .fits file)")
    if overwrite and is_dataset(out):
        if "generated" not in Dataset(out).meta:
            raise CLIError(f"{out}: a dataset not written by `astrovader generate`; --overwrite will not delete it")
        import shutil

        shutil.rmtree(out)


def _sky_noise(args: argparse.Namespace, run: Run):
    """The sky noise of --noise-from DATASET, or of the dataset the run records it was trained on."""
    from astrovader.data.dataset import open_dataset
    from astrovader.data.noise import dataset_sky_noise
    from astrovader.runs import DATASET_NOTE

    source = args.noise_from
    if source is None:
        source = run.training_dataset
        if source is None:
            raise CLIError(f"--noise: {run.name} does not record its training dataset ({DATASET_NOTE}); give "
                           "--noise-from DATASET (stamps like the training ones) instead")
    noise = dataset_sky_noise(open_dataset(source))
    unit = noise.stretch.unit if noise.stretch else "stored value / 255"
    print(f"sky noise measured on {source}: sigma {noise.sigma:.4g} {unit} per pixel, neighbour correlation "
          f"{noise.correlation:.2f}")
    return noise


def cmd_generate(args: argparse.Namespace) -> int:
    from astrovader import sampling
    from astrovader.runs import Run

    if args.n < 0:
        raise CLIError("--n must be >= 0")
    if args.batch_size < 1:
        raise CLIError("--batch-size must be >= 1")
    if args.temperature <= 0:
        raise CLIError("--temperature must be > 0")
    run = Run.open(args.run_dir, args.device, allow_unfinished=args.allow_unfinished)
    cfg, net = run.config, run.network
    K = cfg.model.n_components
    if args.component and any(not 0 <= c < K for c in args.component):
        raise CLIError(f"--component must be in 0..{K - 1} (the model has {K} components), got {args.component}")
    fmt = _format(args)
    noise = _sky_noise(args, run) if args.noise or args.noise_from else None
    _clear_output(Path(args.out), fmt, args.overwrite)
    kw = dict(components=args.component or None, weights=args.weights, temperature=args.temperature, seed=args.seed,
              batch_size=args.batch_size, precision=args.precision, noise=noise)
    if fmt == "png":
        out = sampling.generate_to_png(run, args.out, args.n, **kw)
        print(f"wrote a grid of {args.n} synthetic galaxies to {out}")
        return 0
    if fmt == "fits":
        out = sampling.generate_to_fits(run, args.out, args.n, **kw, progress=not args.quiet,
                                        command=args.command_line)
        print(f"wrote {args.n} synthetic galaxies (float32 cube + CATALOG table) to {out}")
        return 0
    out = sampling.generate_to_dataset(run, args.out, args.n, **kw, progress=not args.quiet)
    from astrovader.data.dataset import Dataset

    n = len(Dataset(out))
    J = cfg.model.latent_dim
    print(f"dataset {out} holds {n} synthetic galaxies (catalogue: id, component, z_0..z_{J - 1})")
    if not args.no_consistency and n:
        table = sampling.component_consistency(net, out, max_images=args.consistency_max, batch_size=args.batch_size,
                                        progress=not args.quiet)
        used = int(table["n"].sum())
        print(f"component consistency (share of images assigned back to the component they were drawn from, "
              f"{used} images):")
        print(sampling.format_consistency(table))
    return 0


# what explore writes into OUT_DIR (PDF/SVG copies are not made here)
EXPLORE_OUTPUTS = ("gallery.png", "interpolation.png", "interpolation.gif", "interpolation_strip.png", "traversal.png",
                   "deblending.png", "explorer.html")


def cmd_explore(args: argparse.Namespace) -> int:
    from astrovader.analysis.explore_figures import generation_figures
    from astrovader.analysis.explorer import explorer_description, explorer_rows, write_explorer
    from astrovader.data.dataset import open_dataset
    from astrovader.latent_paths import latent_summary
    from astrovader.runs import Run

    if args.steps < 2 or args.traverse_steps < 2:
        raise CLIError("--steps and --traverse-steps must be >= 2")
    out_dir = Path(args.out_dir)
    there = [n for n in EXPLORE_OUTPUTS if (out_dir / n).exists()]
    if there and not args.overwrite:
        raise CLIError(f"{out_dir}: already holds {', '.join(there)}; pass --overwrite to replace them, or choose "
                       "another folder")
    run = Run.open(args.run_dir, args.device, allow_unfinished=args.allow_unfinished)
    net = run.network

    def log(message: str) -> None:
        if not args.quiet:
            print(f"[explore] {message}", file=sys.stderr, flush=True)

    # encoded once, described once: the figures and the explorer page share these predictions
    summary = latent_summary(net, args.dataset, args.predictions, progress=not args.quiet)
    ds = open_dataset(args.dataset)
    description = None
    if not args.no_explorer and np.array_equal(summary.rows, explorer_rows(len(ds), args.max_points, args.seed)):
        log(f"describing the components ({len(summary.rows):,} galaxies)")
        description = explorer_description(net, ds, summary, seed=args.seed, progress=not args.quiet)
    companions = args.companion
    if companions is None and description is not None:
        companions = description.companion_components
    figs = generation_figures(net, ds, args.out_dir, predictions=summary,
                              n_per_component=args.n_per_component, steps=args.steps,
                              traverse_steps=args.traverse_steps, companion_components=companions,
                              closed=not args.open, temperature=args.temperature, seed=args.seed,
                              progress=not args.quiet, log=log)
    for title, path in figs:
        print(f"{path}  {title}")
    if not args.no_explorer:
        page = write_explorer(run, ds, Path(args.out_dir) / "explorer.html", pred=summary,
                              max_points=args.max_points, seed=args.seed, command=args.command_line,
                              progress=not args.quiet, description=description)
        print(f"{page}  the cluster explorer: open it in a browser (offline), name the components, export the names")
    print(f"{Path(args.out_dir) / 'interpolation.gif'}  animated route interpolation")
    print(f"{Path(args.out_dir) / 'interpolation_strip.png'}  route interpolation frame strip")
    if not any(Path(p).name == "deblending.png" for _, p in figs):
        print("no deblending figure: no component is grouped by companions (astrovader describe flags none); "
              "name one with --companion C to deblend from it anyway")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="synthetic galaxies sampled from the mixture prior",
                       description="Choose a component (--component, else drawn from the mixture weights or "
                       "uniformly), draw z ~ N(mu_c, T var_c) and decode. Streams in batches with bounded memory; "
                       "a dataset output is resumable (re-run the same command) and reproducible for a seed, "
                       "and is followed by a component-consistency check: the share of generated images the "
                       "model assigns back to the component they came from.")
    add_run(p)
    p.add_argument("out", help="output: dataset directory, .png grid or .fits cube (see --format)")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--component", type=int, nargs="+", metavar="C",
                   help="component(s) to sample from; several are cycled through in turn (default: drawn)")
    p.add_argument("--cluster", dest="component", type=int, nargs="+", help=argparse.SUPPRESS)  # the old name
    p.add_argument("--weights", choices=("mixture", "uniform"), default="mixture",
                   help="how components are drawn without --component: by the mixture weights (the training "
                   "distribution, default) or uniformly")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="scale of the component variances (default 1; the paper's script used 0.5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="dataset (packed, predict-able), png (grid) or fits (cube + catalogue); "
                   "default from OUT's suffix, else dataset")
    p.add_argument("--batch-size", type=int, default=1024, help="images per batch (default 1024)")
    add_device(p)
    add_allow_unfinished(p)
    add_overwrite(p,
                   help="replace OUT (a dataset only if generate wrote it); without it a dataset is resumed")
    p.add_argument("--no-consistency", action="store_true", help="skip the component-consistency check")
    p.add_argument("--consistency-max", type=int, default=100_000, metavar="N",
                   help="check consistency on at most the first N images (default 100000)")
    p.add_argument("--noise", action="store_true",
                   help="add survey sky noise, measured on the stamps of the run's training dataset (level and "
                   "neighbour correlation, in linear flux where the dataset records its stretch), so synthetic "
                   "stamps stand in for survey ones; recorded in the output (default: the noiseless mean)")
    p.add_argument("--noise-from", metavar="DATASET", default=None,
                   help="as --noise, measured on DATASET's stamps instead (e.g. for a shipped model)")
    add_quiet(p)
    add_precision(p, "images")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("explore", help="the cluster explorer page, and gallery, interpolation, traversal and "
                       "deblending figures",
                       description="Writes explorer.html (an interactive page that opens offline: a map of the "
                       "latent space, a panel per component, filters, comparison, and names you can export as "
                       "component_names.json), gallery.png (samples per component), interpolation.png/.gif and "
                       "interpolation_strip.png (shortest route through each component's most probable "
                       "object), traversal.png (each latent variable min..max) and deblending.png.")
    add_run(p)
    p.add_argument("dataset", help="dataset directory (usually the training data)")
    p.add_argument("out_dir", help="directory for the figures")
    p.add_argument("--predictions", default=None, metavar="CATALOG",
                   help="an `astrovader predict` catalogue of DATASET, to skip re-encoding it")
    p.add_argument("--n-per-component", type=int, default=8, help="gallery samples per component (default 8)")
    p.add_argument("--n-per-cluster", dest="n_per_component", type=int, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # the old name
    p.add_argument("--steps", type=int, default=8, help="interpolation steps per leg (default 8)")
    p.add_argument("--traverse-steps", type=int, default=9, help="traversal columns (default 9)")
    p.add_argument("--companion", type=int, nargs="+", default=None, metavar="C",
                   help="components grouped by companions, whose members the deblending figure starts from "
                   "(default: those astrovader describe flags; no deblending figure when none is)")
    p.add_argument("--open", action="store_true", help="open route (default: closed tour)")
    p.add_argument("--no-explorer", action="store_true", help="skip the interactive page explorer.html")
    p.add_argument("--max-points", type=positive_int("--max-points"), default=20000, metavar="N",
                   help="galaxies on the explorer's map; a seeded random sample beyond N (default 20000)")
    p.add_argument("--temperature", type=float, default=1.0, help="gallery variance scale (default 1)")
    p.add_argument("--seed", type=int, default=0, help="gallery seed (default 0)")
    add_overwrite(p, help="replace figures and explorer.html already in OUT_DIR")
    add_device(p)
    add_allow_unfinished(p)
    add_quiet(p)
    p.set_defaults(func=cmd_explore)
