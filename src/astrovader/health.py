"""``astrovader check``: is a dataset or a run directory whole and usable?

Each check returns a :class:`Health`: a few summary lines, and the problems found, each naming the file (and chunk,
row or key) and the fix. A dataset is checked down to every image chunk (present and decodable); a run down to
every tensor of its weights and checkpoint (readable and finite), its config against its checkpoint, and how far
its training got. The commands that use datasets and runs run the cheap parts of these checks when they open them
(:class:`~astrovader.data.dataset.Dataset`, :class:`~astrovader.runs.Run`) and refuse with the same messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from astrovader.data.dataset import CATALOG, IMAGES, META, Dataset, DatasetError, is_dataset
from astrovader.data.fingerprint import IMAGE_IDS, chunk_digest
from astrovader.runs import (
    CHECKPOINT,
    CONFIG,
    HISTORY,
    TRAINING_ROWS,
    WEIGHTS,
    Run,
    RunError,
    read_history,
    training_dataset,
    training_ids,
)


@dataclass
class Health:
    """What ``check`` found: ``summary`` lines (always) and ``problems`` (empty when all is well)."""

    kind: str
    path: Path
    summary: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        head = f"{self.path}: {self.kind}, " + ("healthy" if self.ok else f"{len(self.problems)} problem(s)")
        lines = [head, *(f"  {s}" for s in self.summary), *(f"  PROBLEM: {p}" for p in self.problems)]
        return "\n".join(lines)


def check_dataset(path: str | Path, progress: bool = False) -> Health:
    """Metadata, catalogue (ids present and unique, one row per image) and every image chunk (present, decodable)."""
    path = Path(path)
    health = Health("dataset", path)
    try:
        ds = Dataset(path)
    except DatasetError as exc:
        health.problems.append(str(exc))
        return health
    health.summary.append(f"{len(ds):,} images of {ds.channels} x {ds.image_size} x {ds.image_size} px, "
                          f"{len(ds.catalog.columns)} catalogue columns, chunks of {ds.chunk_rows} rows")
    if not ds.complete:
        health.problems.append(f"{path / META}: marked incomplete (a writer was interrupted); run the command that "
                               "made it again to finish it")
    meta_geometry = (ds.meta.get("channels"), ds.meta.get("image_size"))
    if meta_geometry != (None, None) and meta_geometry != (ds.channels, ds.image_size):
        health.problems.append(f"{path / META}: records {meta_geometry[0]} x {meta_geometry[1]} px images but "
                               f"{path / IMAGES} holds {ds.channels} x {ds.image_size} px")
    if ds.realigned:
        health.problems.append(f"{path / CATALOG}: rows are not in the images' order (the catalogue was re-sorted "
                               "after writing); astrovader re-aligns them by id when it reads the dataset, but other "
                               f"tools will not: sort it back into the order of {IMAGE_IDS}")
    recorded = ds.meta.get("fingerprint") if isinstance(ds.meta.get("fingerprint"), dict) else {}
    digests = recorded.get("chunks", []) if recorded.get("chunk_rows") == ds.chunk_rows else []
    if not (path / IMAGE_IDS).is_file():
        health.summary.append("no row-image fingerprint (a dataset written before astrovader recorded one)")
    n_chunks = -(-len(ds) // ds.chunk_rows)
    bad: list[str] = []
    ids = ds.catalog["id"].tolist()
    for c in tqdm(range(n_chunks), desc="checking chunks", unit="chunk", disable=not progress):
        lo, hi = c * ds.chunk_rows, min((c + 1) * ds.chunk_rows, len(ds))
        try:
            pixels = ds.read(lo, hi)
        except DatasetError as exc:
            bad.append(str(exc))
            continue
        if c < len(digests) and chunk_digest(ids[lo:hi], pixels) != digests[c]:
            bad.append(f"{ds.chunk_path(c)}: image chunk {c} (rows {lo}..{hi - 1}) does not hold the pixels and ids "
                       "recorded when it was written (images changed or moved); restore it or re-create the dataset")
    health.problems.extend(bad[:10])
    if len(bad) > 10:
        health.problems.append(f"... and {len(bad) - 10} more damaged chunks")
    health.summary.append(f"{n_chunks - len(bad)} of {n_chunks} image chunks present and decodable")
    return health


def check_run(path: str | Path) -> Health:
    """Config valid, weights readable and finite, mixture prior initialised and proper, training finished, and the
    checkpoint consistent with the config."""
    path = Path(path)
    health = Health("run", path)
    try:
        run = Run.open(path, "cpu")
    except (RunError, ValueError, OSError) as exc:
        health.problems.append(str(exc))
        return health
    cfg, net, state = run.config, run.network, run.state
    m = cfg.model
    health.summary.append(f"{m.image_size} px, {m.channels} band(s), J = {m.latent_dim}, K = {m.n_components}; "
                          f"{state.describe()}")
    if not state.mixture_initialised:
        health.problems.append(f"{path / WEIGHTS}: the mixture prior was never initialised (training stopped in "
                               f"gamma-training); resume with `astrovader train DATASET {path} --resume`")
    elif not state.finished:
        health.problems.append(f"{path / WEIGHTS}: training unfinished ({state.describe()}); resume with "
                               f"`astrovader train DATASET {path} --resume` (or use it with --allow-unfinished)")
    weights = net.gmm.weights.detach().double().numpy()
    if not np.isclose(weights.sum(), 1.0, atol=1e-4) or (weights < 0).any():
        health.problems.append(f"{path / WEIGHTS}: mixture weights do not form a distribution (sum {weights.sum()})")
    if (path / CHECKPOINT).is_file():
        health.problems.extend(_checkpoint_problems(path, cfg.train.epochs, state.epoch))
    health.problems.extend(_split_problems(path))
    if (path / HISTORY).is_file():
        try:
            health.summary.append(f"{len(read_history(path))} epochs in {HISTORY}")
        except (OSError, ValueError, KeyError) as exc:
            health.problems.append(f"{path / HISTORY}: unreadable ({exc})")
    return health


def _split_problems(path: Path) -> list[str]:
    """The run's recorded training rows against its dataset's current 'train' split: a split rewritten after
    training makes every later 'held-out' number a number on training galaxies."""
    trained = training_ids(path)
    dataset = training_dataset(path)
    if trained is None or dataset is None:
        return []
    try:
        ds = Dataset(dataset)
    except (DatasetError, OSError):
        return []  # the dataset moved or was removed: nothing to compare with
    if "split" not in ds.catalog.columns:
        return []
    now = set(ds.catalog["id"].to_numpy()[ds.split_indices("train")].tolist())
    if now == trained:
        return []
    leaked = len(trained - now)
    return [f"{path / TRAINING_ROWS}: the 'split' column of {ds.path} was rewritten after training: {leaked:,} of the "
            f"{len(trained):,} galaxies the run trained on are no longer in its 'train' split, so its test rows are "
            "not held out; restore the old split (kept as column split_previous) or train again"]


def _checkpoint_problems(path: Path, epochs: int, weights_epoch: int | None) -> list[str]:
    from safetensors import safe_open

    ckpt = path / CHECKPOINT
    try:
        with safe_open(str(ckpt), framework="pt") as fh:
            meta = fh.metadata() or {}
            nonfinite = [k for k in fh.keys()
                         if (t := fh.get_tensor(k)).is_floating_point() and not bool(t.isfinite().all())]
    except Exception as exc:  # noqa: BLE001 - safetensors' own error type for damaged files
        return [f"{ckpt}: unreadable ({' '.join(str(exc).split())}); training cannot resume from it"]
    problems = []
    if meta.get("format") != "astrovader-checkpoint":
        problems.append(f"{ckpt}: not an astrovader checkpoint (format {meta.get('format')!r})")
    if nonfinite:
        problems.append(f"{ckpt}: tensor {nonfinite[0]!r} holds NaN or infinite values; training cannot resume "
                        "from it")
    try:
        epoch = int(meta.get("epoch", "-1"))
        history = json.loads(meta.get("history", "[]"))
    except ValueError:
        return [*problems, f"{ckpt}: metadata unreadable (epoch/history)"]
    if epoch >= epochs:
        problems.append(f"{ckpt}: at epoch {epoch + 1} but {CONFIG} schedules {epochs} epochs; the config was "
                        "changed after training")
    if len(history) != epoch + 1:
        problems.append(f"{ckpt}: history has {len(history)} epochs for epoch {epoch + 1}")
    if weights_epoch is not None and weights_epoch != epoch:
        problems.append(f"{path / WEIGHTS} is from epoch {weights_epoch + 1} but {CHECKPOINT} from epoch "
                        f"{epoch + 1}; one of them was replaced")
    return problems


def check_path(path: str | Path, progress: bool = False) -> Health:
    """Check a dataset or a run directory, whichever ``path`` is."""
    path = Path(path)
    if is_dataset(path):
        return check_dataset(path, progress)
    if (path / CONFIG).exists() or (path / WEIGHTS).exists() or (path / CHECKPOINT).exists():
        return check_run(path)
    if path.is_dir() and any(path.glob("images.zarr")):
        return check_dataset(path, progress)
    raise FileNotFoundError(f"{path}: neither a dataset ({META}) nor a run directory ({CONFIG}, {WEIGHTS})")
