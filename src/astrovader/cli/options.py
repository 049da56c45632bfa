"""The options several commands share, declared once: the run, the dataset, the output and ``--overwrite``, the
device, ``--allow-unfinished``, ``--quiet``, ``--threads`` and ``--precision``, and the bounded number types.

Each ``add_*`` function adds one option to a sub-command's parser with the wording every command uses; a command
passes its own ``help`` only where the option means something more specific there.
"""

from __future__ import annotations

import argparse

RUN_HELP = "trained run directory, or a pretrained model's name (`astrovader presets`)"


def add_run(p: argparse.ArgumentParser, help: str = RUN_HELP) -> None:
    """The positional RUN (stored as ``run_dir``)."""
    p.add_argument("run_dir", metavar="RUN", help=help)


def add_dataset(p: argparse.ArgumentParser, help: str = "dataset directory") -> None:
    """The positional DATASET."""
    p.add_argument("dataset", metavar="DATASET", help=help)


def add_overwrite(p: argparse.ArgumentParser, help: str = "replace an existing OUT") -> None:
    p.add_argument("--overwrite", action="store_true", help=help)


def add_device(p: argparse.ArgumentParser, help: str = "auto, cpu, cuda, cuda:N (default: auto)") -> None:
    p.add_argument("--device", metavar="DEVICE", default=None, help=help)


def add_allow_unfinished(p: argparse.ArgumentParser,
                         help: str = "use a run whose training has not finished (default: refuse it)") -> None:
    p.add_argument("--allow-unfinished", action="store_true", help=help)


def add_quiet(p: argparse.ArgumentParser, help: str = "no progress bars") -> None:
    p.add_argument("--quiet", action="store_true", help=help)


def add_threads(p: argparse.ArgumentParser, help: str = "torch CPU threads (default: torch's choice)") -> None:
    p.add_argument("--threads", type=int, default=None, help=help)


def add_precision(p: argparse.ArgumentParser, what: str) -> None:
    """The ``--precision`` option of the commands that run the network over many images."""
    p.add_argument("--precision", choices=("float32", "bf16"), default="float32",
                   help=f"float32 (default: the {what} do not depend on the machine) or bf16: the decoder "
                   "(reconstructions, generated images) in bf16, about 1.5x faster on CPUs with AVX512-BF16/AMX "
                   "and on GPUs; latents and probabilities stay float32. Recorded in the output (PRECISN)")


def bounded(name: str, kind: type, minimum: float, what: str):
    """An argparse type: ``kind`` (int or float) not below ``minimum``, with an error naming the option."""
    def conv(value: str):
        try:
            v = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {what}, got {value!r}") from None
        if not v >= minimum:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{name} must be {what}, got {value!r}")
        return v
    return conv


def positive_int(name: str):
    return bounded(name, int, 1, "a positive integer")


def non_negative_float(name: str):
    return bounded(name, float, 0.0, "a number >= 0")
