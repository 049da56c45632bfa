"""The ``astrovader`` command line: a thin layer that parses arguments and calls the Python API.

Each group of commands lives in its own module with a ``register(subparsers)`` function that adds its
sub-commands; every sub-command sets ``func`` to a callable taking the parsed namespace and returning
an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import traceback
import warnings

from astrovader.errors import AstrovaderError, InputError

_COMMAND_MODULES = (
    "astrovader.cli.core",
    "astrovader.cli.data",
    "astrovader.cli.analysis",
    "astrovader.cli.generate",
    "astrovader.cli.simulate",
    "astrovader.cli.benchmark",
)


class CLIError(InputError):
    """A user error: printed as one clear line, exit code 2."""


# What a person can fix: astrovader's own errors (bad input, a damaged dataset or run, a bad setting) and the
# operating system's (a missing, unreadable or existing file, a full disk). These are printed as one line naming
# the culprit (exit 2); anything else is a bug and keeps its traceback.
USER_ERRORS = (AstrovaderError, OSError)
BUG_LINE = ("astrovader {command}: this is a bug in astrovader, not a problem with your input: please report it "
            "with the traceback above")


# One example per command, shown at the end of its --help; tests/test_cli_examples.py runs every one.
EXAMPLES: dict[str, str] = {
    "demo": "astrovader demo astrovader-demo/",
    "train": "astrovader train data/ run/ --preset sdss64-k12 --set train.static_epochs=10 --device auto",
    "predict": "astrovader predict run/ data/ predictions.fits",
    "check": "astrovader check data/ run/",
    "presets": "astrovader presets",
    "summary": "astrovader summary --preset paper",
    "ingest": "astrovader ingest cutouts/ data/ --labels labels.csv --id-column objid --preset sdss64-k12",
    "split": "astrovader split data/ --fractions 0.8,0.05,0.15 --seed 0",
    "download": "astrovader download gz2_hart16.csv cutouts/ --limit 1000",
    "report": "astrovader report run/ data/ report/ --split test --dpi 200 --vector pdf",
    "describe": "astrovader describe run/ data/ components.csv --split test",
    "choose-k": "astrovader choose-k run/ data/ --sweep",
    "generate": "astrovader generate run/ synthetic.png --n 64 --component 0 1 --seed 0",
    "explore": "astrovader explore run/ data/ figures/",
    "simulate": "astrovader simulate sims/ --n 5000 --size 64 --seed 1",
    "benchmark": "astrovader benchmark simulated --seeds 3 --out bench-sim",
}


class _HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped to the terminal; the example kept on its own line, as typed."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("example:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _finish(sub: argparse._SubParsersAction) -> None:
    """Every command's help ends with its example, and every value is named in capitals (RUN, N, ...)."""
    for name, p in sub.choices.items():
        if name in EXAMPLES:
            p.epilog = f"example:\n  {EXAMPLES[name]}"
            p.formatter_class = _HelpFormatter
        for action in p._actions:
            takes_value = action.nargs != 0 and not isinstance(action, argparse._HelpAction)
            if action.metavar is None and takes_value and action.choices is None:
                action.metavar = action.dest.upper()


def build_parser() -> argparse.ArgumentParser:
    from astrovader import __version__

    parser = argparse.ArgumentParser(
        prog="astrovader",
        description="Unsupervised galaxy morphology with a Gaussian-mixture VAE (AstroVaDEr, s3VDC training).",
    )
    parser.add_argument("--version", action="version", version=f"astrovader {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full Python traceback of an error instead of its one-line message")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _finish(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as the command line prints them: one line, no source excerpt (``--debug`` keeps Python's form)."""
    print(f"astrovader: warning: {' '.join(str(message).split())}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = "astrovader " + shlex.join(sys.argv[1:] if argv is None else argv)  # for provenance
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    with warnings.catch_warnings():  # restores Python's warning display when the command returns
        if not args.debug:
            warnings.showwarning = _show_warning
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """The command, with user errors as one line (exit 2) and anything else as a bug with its traceback (exit 1)."""
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        if args.debug:
            raise
        print(f"astrovader {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:
        if args.debug:
            raise
        traceback.print_exc()
        print(BUG_LINE.format(command=args.command), file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    """The error's message on one line; OS errors without one name their file and what went wrong."""
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


if __name__ == "__main__":  # pragma: no cover - python -m astrovader.cli
    sys.exit(main())
