"""The ``simulate`` command: a packed dataset of SDSS-like simulated galaxies with known morphology."""

from __future__ import annotations

import argparse

from astrovader.cli import CLIError
from astrovader.cli.options import add_quiet


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def cmd_simulate(args: argparse.Namespace) -> int:
    from astrovader.data.simulate import CLASS_NAMES, simulate

    if args.n < 1:
        raise CLIError("--n must be >= 1")
    if args.size < 8 or args.size % 8:
        raise CLIError(f"--size must be a multiple of 8 pixels (the networks halve an image three times), "
                       f"got {args.size}")
    if args.workers is not None and args.workers < 1:
        raise CLIError("--workers must be >= 1")
    ds = simulate(args.out, n=args.n, size=args.size, seed=args.seed,
                  companion_fraction=args.companion_fraction, class_fractions=args.class_fractions,
                  workers=args.workers, progress=not args.quiet)
    counts = ds.catalog["class_name"].value_counts()
    per_class = ", ".join(f"{name} {int(counts.get(name, 0))}" for name in CLASS_NAMES)
    n_comp = int(ds.catalog["has_companion"].sum())
    print(f"wrote {len(ds)} simulated {ds.image_size}x{ds.image_size} px galaxies to {ds.path} ({per_class}; "
          f"{n_comp} with a companion)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate", help="simulate SDSS-like galaxy images with known morphology (GalSim) into a dataset",
        description="Draw elliptical, face-on disc and edge-on disc galaxies with GalSim (SDSS pixel scale, "
                    "Moffat PSF, sky noise, optional companions), stretch them to 8 bits with a fixed asinh "
                    "stretch, and write a packed dataset whose catalogue holds the true class and every "
                    "simulated parameter. The same seed gives identical bytes whatever --workers.")
    p.add_argument("out", metavar="OUT", help="output dataset directory (must not exist or be empty)")
    p.add_argument("--n", type=int, default=3000, help="number of galaxies (default: 3000)")
    p.add_argument("--size", type=int, default=64, help="stamp size in pixels (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--companion-fraction", type=float, default=0.2,
                   help="fraction of stamps with a companion galaxy or foreground star (default: 0.2)")
    p.add_argument("--class-fractions", type=_fractions, default=None, metavar="E,F,D",
                   help="relative frequencies of elliptical, face-on disc, edge-on disc (default: equal)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: number of CPUs, at most 8; results do not depend on it)")
    add_quiet(p, "no progress bar")
    p.set_defaults(func=cmd_simulate)


register_simulate = register
