"""The ``astrovader`` command line: a thin layer that parses arguments and calls the Python API.

Each group of commands lives in its own module with a ``register(subparsers)`` function that adds its
sub-commands; every sub-command sets ``func`` to a callable taking the parsed namespace and returning
an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

_COMMAND_MODULES = (
    "astrovader.cli.core",
    "astrovader.cli.data",
    "astrovader.cli.analysis",
    "astrovader.cli.generate",
    "astrovader.cli.simulate",
    "astrovader.cli.benchmark",
)


class CLIError(Exception):
    """A user error: printed as one clear line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from astrovader import __version__

    parser = argparse.ArgumentParser(
        prog="astrovader",
        description="Unsupervised galaxy morphology with a Gaussian-mixture VAE (AstroVaDEr, s3VDC training).",
    )
    parser.add_argument("--version", action="version", version=f"astrovader {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"astrovader {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        # Library errors are written to be read by people: show them without a traceback.
        print(f"astrovader {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover - python -m astrovader.cli
    sys.exit(main())
