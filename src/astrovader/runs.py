"""The run directory: its file names, and reading and writing weights, checkpoints, history and config.

A run directory holds ``config.toml``, ``model.safetensors`` (network + mixture prior),
``checkpoint.safetensors`` (weights, optimiser state, epoch and history; written atomically after every epoch),
``history.csv``, for runs with an alignment phase ``init_clusters.safetensors``, and for runs with
``train.restarts`` > 1 the candidates under ``restarts/`` and ``restarts.json``. Weights are safetensors, never
pickles.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from astrovader.compute import resolve_device
from astrovader.config import Config
from astrovader.data.dataset import atomic_write_bytes
from astrovader.data.fingerprint import TRAINING_ROWS
from astrovader.data.outputs import temporary_name
from astrovader.errors import InputError, RunError
from astrovader.model import AstroVaDErNet
from astrovader.pretrained import NAMES, PREFIX, card_in, check_stamps, is_pretrained, resolve

CHECKPOINT = "checkpoint.safetensors"
WEIGHTS = "model.safetensors"
CONFIG = "config.toml"
HISTORY = "history.csv"
INIT_CLUSTERS = "init_clusters.safetensors"  # the initial clustering's labels, for a resumed alignment phase
HISTORY_FIELDS = ("epoch", "phase", "beta", "kl_weight", "lr", "train_total", "train_recon", "train_kl_unit",
                  "train_kl_gmm", "val_total", "val_recon", "val_kl_unit", "val_kl_gmm", "seconds",
                  "reseeded")  # "d<c ...": component d re-seeded by splitting c at the end of that epoch
DATASET_NOTE = "dataset.txt"  # the absolute path of the dataset the run was trained on
RESTARTS_DIR = "restarts"  # with train.restarts > 1: one ordinary run per candidate seed, restarts/seed-S
RESTARTS_NOTE = "restarts.json"  # every candidate's final loss and the seed kept


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    tmp = temporary_name(path, "")
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    except Exception as exc:  # noqa: BLE001 - safetensors reports a full disk as its own error type
        tmp.unlink(missing_ok=True)
        raise OSError(f"{path}: could not be written ({' '.join(str(exc).split())}); the previous file is "
                      "intact: free disk space, then resume with --resume") from None
    os.replace(tmp, path)


def save_weights(net: AstroVaDErNet, path: Path, metadata: dict[str, str] | None = None) -> None:
    atomic_save_safetensors(net.state_dict(), path, {"format": "astrovader-weights", **(metadata or {})})


def load_weights(net: AstroVaDErNet, path: Path) -> dict[str, str]:
    """Load a weights file into ``net``, refusing unreadable, mismatched or non-finite weights; returns its
    metadata (``epoch``: the last finished epoch, for files written by training)."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except FileNotFoundError:
        raise RunError(f"{path}: missing; is this a run directory written by `astrovader train`?") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for truncated or garbled files
        raise RunError(f"{path}: not a readable safetensors file ({' '.join(str(exc).split())}); the file is "
                       "damaged: restore it, or resume training from checkpoint.safetensors") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise RunError(f"{path}: tensor {bad[0]!r} holds NaN or infinite values ({len(bad)} tensors in all); "
                       "the file is damaged: restore it or train again")
    own = net.state_dict()
    wrong = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:  # load_state_dict raises on these even with strict=False
        raise RunError(f"{path}: tensor {wrong[0]!r} has shape {tuple(state[wrong[0]].shape)} but {CONFIG} builds "
                       f"{tuple(own[wrong[0]].shape)} ({len(wrong)} tensors differ); the weights and {CONFIG} come "
                       f"from different runs (was {CONFIG} edited, or did two commands write this run?): restore "
                       f"{CONFIG} or train again")
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RunError(f"{path}: weights do not match the config's architecture "
                       f"(missing {missing[:4]}, unexpected {unexpected[:4]}); was {CONFIG} edited?")
    return meta


def save_checkpoint(run_dir: Path, net: AstroVaDErNet, opt: torch.optim.Optimizer, epoch: int,
                     history: list[dict[str, Any]]) -> None:
    tensors = {f"model/{k}": v for k, v in net.state_dict().items()}
    opt_state = opt.state_dict()
    for pid, st in opt_state["state"].items():
        for name, value in st.items():
            tensors[f"optim/{pid}/{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    meta = {"format": "astrovader-checkpoint", "epoch": str(epoch),
            "param_groups": json.dumps(opt_state["param_groups"]), "history": json.dumps(history)}
    atomic_save_safetensors(tensors, run_dir / CHECKPOINT, meta)
    save_weights(net, run_dir / WEIGHTS, {"epoch": str(epoch)})
    write_history(run_dir / HISTORY, history)


def load_checkpoint(run_dir: Path, net: AstroVaDErNet, opt: torch.optim.Optimizer,
                     device: torch.device) -> tuple[int, list[dict[str, Any]]]:
    from safetensors import safe_open

    path = run_dir / CHECKPOINT
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    if meta.get("format") != "astrovader-checkpoint":
        raise InputError(f"{path}: not an astrovader checkpoint")
    net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim/"):
            _, pid, name = k.split("/", 2)
            state.setdefault(int(pid), {})[name] = v.to(device) if name != "step" else v
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    return int(meta["epoch"]), json.loads(meta["history"])


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    fields = list(HISTORY_FIELDS)
    for extra in ("train_scan", "train_contrastive"):  # only runs with these terms (loss.contrastive, scan_epochs)
        if any(extra in row for row in history):
            fields.insert(fields.index("train_kl_gmm") + 1, extra)
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_bytes(path, buf.getvalue().encode())


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    with open(Path(run_dir) / HISTORY, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k, v in r.items():
            if k not in ("phase", "reseeded") and v not in ("", None):
                r[k] = int(v) if k == "epoch" else float(v)
    return rows


@dataclass(frozen=True)
class RunState:
    """How far a run's saved model got: ``epoch`` is the last finished epoch (None when the weights do not say,
    e.g. a model saved by ``AstroVaDEr.save``), out of ``epochs``; the mixture prior is fitted after the last
    gamma-training epoch."""

    epoch: int | None
    epochs: int
    gamma_epochs: int

    @property
    def mixture_initialised(self) -> bool:
        return self.epoch is None or self.epoch >= self.gamma_epochs - 1

    @property
    def finished(self) -> bool:
        return self.epoch is None or self.epoch >= self.epochs - 1

    def require_finished(self, run_dir: str | Path) -> None:
        """Refuse an unfinished run, with the fix (resume it, or accept it with --allow-unfinished)."""
        if not self.finished:
            raise RunError(f"{run_dir}: the run is {self.describe()}; finish it with `astrovader train DATASET "
                           f"{run_dir} --resume`, or pass --allow-unfinished to use it as it is")

    def describe(self) -> str:
        if self.epoch is None:
            return "saved model (training progress not recorded)"
        state = "finished" if self.finished else "unfinished"
        prior = "" if self.mixture_initialised else "; the mixture prior was never initialised"
        return f"{state}: trained to epoch {self.epoch + 1} of {self.epochs}{prior}"


def load_config(run_dir: str | Path) -> Config:
    """A run's config, or a RunError naming the missing file."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RunError(f"{run_dir}: no {CONFIG}; is this a run directory written by `astrovader train`?")
    return Config.from_toml(path)


class Run:
    """A trained run, opened once: its directory, config, training state and network, and what outputs record of it.

    Every command that uses a trained model opens a ``Run`` from the name the user gave (a run directory or a
    pretrained model's name) with :meth:`open` and passes it down; nothing below turns the name into a path again.

    Parameters
    ----------
    name : str
        The run as the user named it (a path, or a pretrained model's name).
    path : pathlib.Path
        The run directory (for a pretrained model, its packaged folder).
    config : Config
        The run's ``config.toml``.
    state : RunState
        How far training got.
    network : AstroVaDErNet
        The trained network, in eval mode on the device it was opened for.
    """

    def __init__(self, name: str, path: Path, config: Config, state: RunState, network: AstroVaDErNet):
        self.name, self.path, self.config, self.state, self.network = name, path, config, state, network
        self._weights_sha256: str | None = None

    @classmethod
    def open(cls, run: Run | str | Path, device: str | torch.device | None = None, *,
             allow_unfinished: bool = True) -> Run:
        """Open ``run`` (a :class:`Run` is returned as it is).

        Parameters
        ----------
        run : Run, str or path-like
            A run directory written by ``astrovader train`` or :meth:`AstroVaDEr.save`, or a pretrained model's
            name (``astrovader presets`` lists them).
        device : str or torch.device, optional
            Where the network runs: "auto" (default: a GPU when there is one), "cpu", "cuda", "cuda:N" or "mps".
        allow_unfinished : bool, default True
            False refuses a run whose training has not finished, with the command that finishes it.

        Raises
        ------
        RunError
            The directory is not a run, its weights are damaged, or (``allow_unfinished=False``) it is unfinished.
        """
        if isinstance(run, Run):
            if not allow_unfinished:
                run.require_finished()
            return run
        path = resolve(run)
        if not (path / WEIGHTS).is_file():
            raise RunError(f"{path}: no {WEIGHTS}; is this a run directory written by `astrovader train`?")
        cfg = load_config(path)
        dev = device if isinstance(device, torch.device) else resolve_device(device or "auto")
        net = AstroVaDErNet(cfg)
        meta = load_weights(net, path / WEIGHTS)
        epoch = int(meta["epoch"]) if str(meta.get("epoch", "")).lstrip("-").isdigit() else None
        out = cls(str(run), path, cfg, RunState(epoch, cfg.train.epochs, cfg.train.gamma_epochs), net.to(dev).eval())
        if not allow_unfinished:
            out.require_finished()
        return out

    def __repr__(self) -> str:
        return f"Run({self.name!r}, {self.state.describe()})"

    @property
    def pretrained(self) -> bool:
        """True when the run is a shipped model named by its name."""
        return is_pretrained(self.name)

    @property
    def label(self) -> str:
        """What outputs record as the run: ``pretrained:NAME`` for a shipped model, else the absolute path."""
        return f"{PREFIX}{self.name}" if self.pretrained else str(self.path.resolve())

    @property
    def weights_sha256(self) -> str:
        """A short content hash of the weights file: which model made an output, whatever its path."""
        if self._weights_sha256 is None:
            self._weights_sha256 = _sha256_16(self.path / WEIGHTS)
        return self._weights_sha256

    def require_finished(self) -> None:
        """Refuse an unfinished run, with the fix (resume it, or accept it with --allow-unfinished)."""
        self.state.require_finished(self.name)

    def provenance(self, command: str | None = None) -> dict[str, str]:
        """What made an output, as FITS-style keys (<= 8 characters).

        Parameters
        ----------
        command : str, optional
            The command line, recorded as ``COMMAND``.

        Returns
        -------
        dict of str to str
            ``ASTROVER``, ``DATE``, ``RUNDIR``, ``WEIGHTS``, ``NCOMP``, ``NLATENT``, ``IMGSIZE``, ``SEED`` and, where
            known, ``PIXSCALE`` and ``COMMAND``.
        """
        return provenance(self, command)

    @property
    def training_dataset(self) -> Path | None:
        """The dataset the run was trained on, as it records it (None for shipped models and older runs)."""
        return training_dataset(self.path)

    @property
    def card(self) -> dict[str, Any] | None:
        """The model card of a shipped model, else None."""
        return card_in(self.path)

    @property
    def names_file(self) -> Path | None:
        """The component names shipped with a pretrained model (None for a run directory)."""
        path = self.path / NAMES
        return path if self.pretrained and path.is_file() else None

    def check_stamps(self, dataset: str | Path) -> None:
        """Refuse a dataset whose stamps were made differently from a shipped model's recipe.

        Nothing is checked for a run directory that is not a shipped model.

        Parameters
        ----------
        dataset : path-like
            The dataset about to be classified.

        Raises
        ------
        InputError
            The stamps' crop, colour or size differ from the recipe, with the ``ingest`` command that makes them right.
        """
        check_stamps(self.card, dataset)

    def trained_on_rows(self, ids: Any) -> int | None:
        """How many of ``ids`` the run trained on.

        Parameters
        ----------
        ids : sequence
            Catalogue ids.

        Returns
        -------
        int or None
            The count, or None when the run does not record its training rows (pretrained models, older runs).
        """
        return trained_on_rows(self.path, ids)


def network_of(model: AstroVaDErNet | Run) -> AstroVaDErNet:
    """The network itself, or a run's network: for functions that take either."""
    return model.network if isinstance(model, Run) else model


def weights_sha256(run_dir: str | Path) -> str:
    """A short content hash of a run's weights file: which model made an output, whatever its path."""
    return _sha256_16(resolve(run_dir) / WEIGHTS)


def _sha256_16(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def provenance(run: Run, command: str | None = None) -> dict[str, str]:
    """What made an output, as FITS-style keys (<= 8 characters), used both as FITS header cards and as Parquet
    schema metadata: package version, UTC date, run directory and weights hash, K, J and the command line."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("astrovader")
    except PackageNotFoundError:  # running from a source tree that was never installed
        package = "unknown"
    cfg = run.config
    out = {"ASTROVER": package, "DATE": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
           "RUNDIR": run.label, "WEIGHTS": run.weights_sha256,
           "NCOMP": str(cfg.model.n_components), "NLATENT": str(cfg.model.latent_dim),
           "IMGSIZE": str(cfg.model.image_size), "SEED": str(trained_seed(run.path, cfg))}
    scale = _training_pixel_scale(run.path)
    if scale:
        out["PIXSCALE"] = f"{scale:g}"  # arcsec / pixel of the images the model was trained on
    if command:
        out["COMMAND"] = command
    return out


# Provenance keys as FITS cards: the value's type and a comment with its unit. Parquet metadata holds the same
# keys as text (its metadata values are strings).
FITS_PROVENANCE: dict[str, tuple[type, str]] = {
    "ASTROVER": (str, "astrovader version"),
    "DATE": (str, "UTC time this file was written"),
    "RUNDIR": (str, "run directory (or pretrained model) of the weights"),
    "WEIGHTS": (str, "sha256(model.safetensors), first 16 hex"),
    "NCOMP": (int, "number of mixture components K"),
    "NLATENT": (int, "number of latent dimensions J"),
    "IMGSIZE": (int, "[pixel] stamp side the model takes"),
    "SEED": (int, "train.seed the weights were trained with"),
    "PIXSCALE": (float, "[arcsec/pixel] of the training stamps"),
    "DATASET": (str, "dataset the rows come from"),
    "SPLIT": (str, "catalogue split of the rows (all: every row)"),
    "NROWS": (int, "number of rows"),
    "COMMAND": (str, "command line that wrote this file"),
    "RUNSTATE": (str, "training state of the run (when unfinished)"),
    "PRECISN": (str, "network arithmetic: float32 or bf16"),
}


def fits_cards(meta: dict[str, str]) -> list[tuple[str, Any, str]]:
    """Provenance ``meta`` as FITS cards (key <= 8 characters, typed value, comment); non-ASCII text escaped."""
    from astrovader.data.outputs import fits_text

    cards = []
    for key, value in meta.items():
        kind, comment = FITS_PROVENANCE.get(key.upper()[:8], (str, ""))
        try:
            typed = kind(value) if kind is not str else fits_text(value)
        except (TypeError, ValueError):
            typed = fits_text(value)
        width = max(20, len(typed) + 2) if isinstance(typed, str) else 20  # the card's value field
        fits = 10 + width + 3 + len(comment) <= 80  # else astropy would truncate it (or CONTINUE a long string)
        cards.append((key.upper()[:8], typed, comment if fits else ""))
    return cards


def trained_seed(run_dir: str | Path, cfg: Config) -> int:
    """The ``train.seed`` the weights were trained with: the kept candidate's when the run had restarts."""
    try:
        return int(json.loads((Path(run_dir) / RESTARTS_NOTE).read_text())["chosen_seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return cfg.train.seed


def training_dataset(run_dir: str | Path) -> Path | None:
    """The dataset the run was trained on, as its ``dataset.txt`` records it; None when it records none (shipped
    models, older runs). The path may no longer exist."""
    note = Path(run_dir) / DATASET_NOTE
    try:
        text = note.read_text().strip()
    except OSError:
        return None
    return Path(text) if text else None


def _training_pixel_scale(run_dir: Path) -> float | None:
    """Arcsec per pixel of the training dataset, where the run records its dataset and that dataset states one."""
    dataset = training_dataset(run_dir)
    try:
        meta = json.loads((dataset / "dataset.json").read_text()) if dataset else None
    except (OSError, ValueError):
        return None
    v = meta.get("pixel_scale_arcsec") if isinstance(meta, dict) else None
    return float(v) if isinstance(v, int | float) and v > 0 else None


def record_training_rows(run_dir: Path, ids: Any, dataset_ids_digest: str | None) -> None:
    """Write the ids of the rows a run trains on, with the id fingerprint of its dataset (see
    :mod:`astrovader.data.fingerprint`), so analyses can tell held-out rows from training rows."""
    import pandas as pd

    from astrovader.data.dataset import atomic_write_parquet

    atomic_write_parquet(run_dir / TRAINING_ROWS, pd.DataFrame({"id": list(ids)}),
                         {"dataset_ids_sha256": dataset_ids_digest or ""})


def training_ids(run_dir: str | Path) -> set | None:
    """The ids of the rows the run trained on, or None when the run does not record them (older runs,
    pretrained models)."""
    import pandas as pd

    path = Path(run_dir) / TRAINING_ROWS
    if not path.is_file():
        return None
    try:
        return set(pd.read_parquet(path)["id"].tolist())
    except (OSError, ValueError, KeyError) as exc:
        raise RunError(f"{path}: unreadable ({' '.join(str(exc).split())}); restore it or train again") from None


def trained_on_rows(run_dir: str | Path, ids: Any) -> int | None:
    """How many of ``ids`` the run trained on (None when it does not record its training rows)."""
    trained = training_ids(run_dir)
    return None if trained is None else sum(1 for i in ids if i in trained)
