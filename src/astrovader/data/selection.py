"""Sample selection and train/validation/test splits (paper section 2).

The paper keeps Galaxy Zoo 2 galaxies with more than 36 votes on the first question and splits them into
159,600 train (about 80%, a multiple of the batch size of 100), 5,000 validation and 41,100 test
galaxies. Splits are stored in the dataset catalogue as a ``split`` column so every later command (the
trainer's ``Dataset.split_indices("train")``, analysis) reads the same assignment. Rows that fail the vote
cut are labelled ``excluded`` and rows absent from supplied id lists ``unassigned``: kept, never dropped.

Random splits permute the rows *sorted by id* with a seeded generator, so the same ids and seed give the
same split whatever order the images were ingested in.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from astrovader.data.dataset import Dataset, write_catalog
from astrovader.data.locks import exclusive
from astrovader.errors import InputError

SPLITS = ("train", "validation", "test")
PAPER_COUNTS = {"train": 159_600, "validation": 5_000, "test": 41_100}
PAPER_MIN_VOTES = 36
EXCLUDED = "excluded"
UNASSIGNED = "unassigned"


def first_question_votes(catalog: pd.DataFrame, column: str | None = None) -> pd.Series:
    """Votes on GZ2 question 1, from ``column``, ``first_question_votes`` or the three answer counts."""
    if column is not None:
        if column not in catalog.columns:
            raise InputError(f"votes column {column!r} not in catalogue; columns include {list(catalog.columns)[:10]}")
        return catalog[column]
    if "first_question_votes" in catalog.columns:
        return catalog["first_question_votes"]
    counts = ["smooth_count", "featured_count", "artifact_count"]
    if all(c in catalog.columns for c in counts):
        return catalog[counts].sum(axis=1)
    raise InputError("catalogue has no first_question_votes column nor smooth/featured/artifact _count columns; "
                   "ingest with --source gz2 or pass the votes column explicitly")


def vote_mask(catalog: pd.DataFrame, min_votes: int = PAPER_MIN_VOTES, column: str | None = None) -> np.ndarray:
    """True for galaxies with *more than* ``min_votes`` first-question votes (missing votes fail the cut)."""
    votes = pd.to_numeric(first_question_votes(catalog, column), errors="coerce")
    return (votes > min_votes).fillna(False).to_numpy(dtype=bool)


def filter_by_votes(catalog: pd.DataFrame, min_votes: int = PAPER_MIN_VOTES, column: str | None = None) -> pd.DataFrame:
    return catalog.loc[vote_mask(catalog, min_votes, column)].reset_index(drop=True)


def _seeded_order(ids: np.ndarray, seed: int) -> np.ndarray:
    """Positions into ``ids`` in a random order that depends only on the set of ids and the seed."""
    by_id = np.argsort(ids, kind="stable")
    return by_id[np.random.default_rng(seed).permutation(len(ids))]


def split_counts_from_fractions(n: int, fractions: tuple[float, float, float], batch_size: int = 100) -> dict:
    """Train = fraction rounded *down* to a multiple of ``batch_size`` (full batches only, as in the paper),
    validation rounded to nearest, test the rest so no galaxy is left out."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not 0.999 <= sum(fractions) <= 1.001:
        raise InputError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    train = int(n * fractions[0]) // batch_size * batch_size
    val = min(int(round(n * fractions[1])), n - train)
    return {"train": train, "validation": val, "test": n - train - val}


def random_split(ids: np.ndarray, counts: dict[str, int], seed: int = 0) -> np.ndarray:
    """Split labels aligned with ``ids`` for given train/validation/test counts (test may be the rest)."""
    ids = np.asarray(ids)
    need = counts["train"] + counts["validation"] + counts["test"]
    if need > len(ids):
        raise InputError(f"split needs {need:,} galaxies (train {counts['train']:,}, validation "
                         f"{counts['validation']:,}, test {counts['test']:,}) but only {len(ids):,} are available")
    order = _seeded_order(ids, seed)
    out = np.full(len(ids), UNASSIGNED, dtype=object)
    start = 0
    for name in SPLITS:
        out[order[start:start + counts[name]]] = name
        start += counts[name]
    return out


def paper_split_counts(n: int) -> dict[str, int]:
    """The paper's 159,600 / 5,000 split with the remainder as test (41,100 for its 205,700 galaxies)."""
    fixed = PAPER_COUNTS["train"] + PAPER_COUNTS["validation"]
    if n < fixed:
        raise InputError(f"--paper-counts needs at least {fixed:,} galaxies after the vote cut, have {n:,}; "
                         "use --fractions for smaller samples")
    return {"train": PAPER_COUNTS["train"], "validation": PAPER_COUNTS["validation"], "test": n - fixed}


def load_id_lists(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """``*Train*.npy``, ``*Valid*.npy``, ``*Test*.npy`` (any byte order) as native int64 arrays."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"--id-lists: {directory} is not a directory")
    keys = {"train": "train", "validation": "valid", "test": "test"}
    out: dict[str, np.ndarray] = {}
    for name, key in keys.items():
        found = sorted(p for p in directory.glob("*.npy") if key in p.name.lower())
        if len(found) != 1:
            raise FileNotFoundError(f"--id-lists: expected one .npy file with {key!r} in its name in {directory}, "
                                    f"found {[p.name for p in found]}")
        arr = np.load(found[0], allow_pickle=False)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"{found[0]}: expected a 1-D integer id array, got {arr.dtype} {arr.shape}")
        out[name] = arr.astype(np.int64)  # big-endian '>i8' -> native
    names = list(out)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = np.intersect1d(out[a], out[b])
            if both.size:
                raise InputError(f"--id-lists: {both.size} ids are in both {a} and {b} (e.g. {both[0]})")
    return out


def split_from_id_lists(ids: np.ndarray, lists: dict[str, np.ndarray]) -> np.ndarray:
    out = np.full(len(ids), UNASSIGNED, dtype=object)
    ids = np.asarray(ids)
    for name, arr in lists.items():
        out[np.isin(ids, arr)] = name
    return out


def apply_split(dataset: str | os.PathLike, *, fractions: tuple[float, float, float] | None = None,
                paper_counts: bool = False, id_lists: str | os.PathLike | None = None, seed: int = 0,
                batch_size: int = 100, min_votes: int | None = None,
                votes_column: str | None = None, overwrite: bool = False) -> dict[str, int]:
    """Write the ``split`` column of ``dataset``'s catalogue atomically; returns counts per split value.
    A different existing ``split`` column is replaced only with ``overwrite`` and kept as ``split_previous``."""
    if sum(x is not None and x is not False for x in (fractions, paper_counts or None, id_lists)) != 1:
        raise InputError("choose exactly one of fractions, paper_counts or id_lists")
    with exclusive(dataset):  # no writer may append while the catalogue is rewritten
        return _apply_split(Dataset(dataset), fractions, paper_counts, id_lists, seed, batch_size, min_votes,
                            votes_column, overwrite)


def _apply_split(ds: Dataset, fractions: tuple[float, float, float] | None, paper_counts: bool,
                 id_lists: str | os.PathLike | None, seed: int, batch_size: int, min_votes: int | None,
                 votes_column: str | None, overwrite: bool) -> dict[str, int]:
    if not ds.complete:
        raise InputError(f"{ds.path}: dataset is incomplete (an ingest is running or was killed); finish it first")
    cat = ds.catalog.copy()
    keep = np.ones(len(cat), bool) if min_votes is None else vote_mask(cat, min_votes, votes_column)
    ids = cat["id"].to_numpy()
    split = np.full(len(cat), EXCLUDED, dtype=object)
    if id_lists is not None:
        if not np.issubdtype(ids.dtype, np.integer):
            raise InputError(f"{ds.path}: --id-lists needs integer ids (SDSS objids); this dataset's ids are "
                             f"{ids.dtype}")
        split[keep] = split_from_id_lists(ids[keep], load_id_lists(id_lists))
    else:
        n = int(keep.sum())
        counts = (split_counts_from_fractions(n, fractions, batch_size) if fractions is not None
                  else paper_split_counts(n))
        split[keep] = random_split(ids[keep], counts, seed)
    new = pd.Series(split, dtype=object).astype(str).to_numpy()
    if "split" in cat.columns:
        old = cat["split"].astype(str).to_numpy()
        if (old != new).any():
            if not overwrite:  # a run trained on the old split would report its training rows as held out
                raise FileExistsError(
                    f"{ds.path / 'catalog.parquet'}: already has a 'split' column, and this one differs in "
                    f"{int((old != new).sum()):,} rows; runs trained on the old split would report training "
                    "galaxies as held out: pass --overwrite to replace it (the old one is kept as split_previous)")
            cat["split_previous"] = old
    cat["split"] = new
    write_catalog(ds.path, cat)
    values, n = np.unique(cat["split"].to_numpy(), return_counts=True)
    order = {k: i for i, k in enumerate((*SPLITS, UNASSIGNED, EXCLUDED))}
    return dict(sorted(zip(values.tolist(), n.tolist(), strict=True), key=lambda kv: order.get(kv[0], 99)))



def select_rows(ds: Dataset, split: str | None, max_images: int | None, seed: int = 0) -> np.ndarray:
    """Rows of the chosen split (all rows without one), randomly thinned to ``max_images``, kept in order."""
    if split is not None:
        if "split" not in ds.catalog.columns:
            raise InputError(f"{ds.path}: the catalogue has no 'split' column, so --split {split} cannot be used")
        rows = ds.split_indices(split)
        if len(rows) == 0:
            values = sorted(ds.catalog["split"].astype(str).unique())
            raise InputError(f"{ds.path}: no rows with split == {split!r}; splits present: {', '.join(values)}")
    else:
        rows = np.arange(len(ds))
    if max_images is not None and max_images < len(rows):
        if max_images < 1:
            raise InputError("max_images must be >= 1")
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_images, replace=False))
    return rows
