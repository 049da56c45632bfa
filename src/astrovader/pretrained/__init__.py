"""Pretrained models shipped inside the package, usable by name wherever a run directory is taken.

Each model is a folder beside this file holding what a run directory holds for prediction (``config.toml`` and
``model.safetensors``) and ``card.json``: what it was trained on, the stamp recipe its inputs must be made with,
its scores on galaxies it never saw, and its limits. ``astrovader presets`` lists them;
``astrovader predict sdss64-k3-gz1 DATASET OUT`` and ``AstroVaDEr.load("sdss64-k3-gz1")`` use them offline.

A path that exists always wins over a name, so a run directory called like a pretrained model is still read.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from astrovader.errors import InputError

CARD = "card.json"
NAMES = "component_names.json"  # as exported by the explorer page, read by `predict --names`
PREFIX = "pretrained:"  # how provenance records a shipped model instead of a path on one machine


def _root() -> Path:
    return Path(str(resources.files(__name__)))


def names() -> list[str]:
    """The shipped models' names, sorted."""
    return sorted(p.name for p in _root().iterdir() if (p / CARD).is_file())


def is_pretrained(run: str | Path) -> bool:
    """True when ``run`` names a shipped model and is not an existing path."""
    return not Path(run).exists() and str(run) in names()


def resolve(run: str | Path) -> Path:
    """The directory of ``run``: the path itself, or the packaged folder of a pretrained model's name."""
    return _root() / str(run) if is_pretrained(run) else Path(run)


def card(name: str) -> dict[str, Any]:
    """The model card of pretrained model ``name`` (a ValueError lists the names)."""
    if name not in names():
        raise InputError(f"unknown pretrained model {name!r}; shipped: {', '.join(names()) or 'none'}")
    return json.loads((_root() / name / CARD).read_text(encoding="utf-8"))


def card_in(path: Path) -> dict[str, Any] | None:
    """The card of the directory ``path`` when it is a pretrained model's folder, else None."""
    try:
        if path.resolve().parent != _root().resolve():
            return None
    except OSError:
        return None
    return card(path.name) if (path / CARD).is_file() else None


def check_stamps(info: dict[str, Any] | None, dataset: str | Path) -> None:
    """Refuse a dataset whose stamps were not made with the recipe of the pretrained model whose card is ``info``:
    a model trained on derotated, flux-normalised 3xR90 stamps gives confident, meaningless components for
    anything else. Nothing is read when ``info`` is None (a run directory that is not a shipped model)."""
    if info is None:
        return
    from astrovader.data.dataset import Dataset

    preprocessing = Dataset(dataset).meta.get("preprocessing") or {}
    want = info["stamps"]
    have = {"crop": preprocessing.get("crop"), "colour": bool(preprocessing.get("colour", False)),
            "size": preprocessing.get("size")}
    need = {"crop": want["crop_description"], "colour": bool(want["colour"]), "size": want["size"]}
    if have != need:
        diff = ", ".join(f"{k} {have[k]!r} (needs {need[k]!r})" for k in need if have[k] != need[k])
        raise InputError(f"{dataset}: stamps made differently from what pretrained model {info['name']} was trained "
                         f"on: {diff}; ingest the images again with `astrovader ingest SOURCE OUT --preset "
                         f"{info['preset']}`")
