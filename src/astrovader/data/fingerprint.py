"""The row-image link of a dataset, and the rows a run trained on: fingerprints that make a mismatch loud.

A dataset's catalogue can be edited by hand (re-sorted in pandas, rows dropped, ids changed) and saved back;
its images cannot follow. So every writer records, beside the images:

- ``image_ids.parquet``: the id of every stored image, in image order. Opening a dataset compares the catalogue's
  ids with it: a catalogue that is a re-ordering of the same ids is re-aligned to the images by id (and ``check``
  says so); any other difference (rows dropped or added, ids changed) is refused with the first mismatch named.
- ``dataset.json`` ``fingerprint``: a SHA-256 of all ids in order (``ids``) and one per image chunk of its ids and
  pixels (``chunks``), which ``astrovader check`` recomputes, finding pixels that moved or changed.

A run records the dataset's id fingerprint and the ids of the rows it trained on (``training_rows.parquet``), so
an analysis of "held-out" rows can tell whether they really were.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from astrovader.errors import InputError

IMAGE_IDS = "image_ids.parquet"
TRAINING_ROWS = "training_rows.parquet"


def _id_bytes(ids: Iterable[object]) -> bytes:
    # type-tagged so that the integer 5 and the text "5" differ, as they do when joining on them
    parts = [(b"i" if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else b"s") + str(v).encode()
             for v in ids]
    return b"\0".join(parts)


def ids_digest(ids: Iterable[object]) -> str:
    """SHA-256 of a sequence of ids, in order."""
    return hashlib.sha256(_id_bytes(ids)).hexdigest()


def chunk_digest(ids: Iterable[object], pixels: np.ndarray) -> str:
    """SHA-256 of one chunk's ids and its uint8 pixels (rows in order)."""
    h = hashlib.sha256(_id_bytes(ids))
    h.update(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    return h.hexdigest()


def describe_mismatch(catalog_ids: np.ndarray, image_ids: np.ndarray) -> str:
    """Where a catalogue's ids stop matching the stored images', in words (first differing row)."""
    n = min(len(catalog_ids), len(image_ids))
    differ = np.flatnonzero(pd.Series(catalog_ids[:n]).astype(str).to_numpy()
                            != pd.Series(image_ids[:n]).astype(str).to_numpy())
    def show(v: object) -> str:
        return repr(v.item() if isinstance(v, np.generic) else v)

    where = (f"row {differ[0]} has id {show(catalog_ids[differ[0]])} but the image at row {differ[0]} was stored "
             f"as id {show(image_ids[differ[0]])}" if len(differ) else "")
    count = (f"{len(catalog_ids):,} catalogue rows for {len(image_ids):,} stored images"
             if len(catalog_ids) != len(image_ids) else "")
    return "; ".join(p for p in (count, where) if p)


def same_ids(a: np.ndarray, b: np.ndarray) -> bool:
    """The same ids in the same order, integers and text kept apart (5 is not "5"). Compared directly rather than
    by digest: every open of a dataset asks, Dask parts included."""
    a, b = np.asarray(a), np.asarray(b)
    if len(a) != len(b) or (a.dtype.kind in "iu") != (b.dtype.kind in "iu"):
        return False
    return bool(len(a) == 0 or (a == b).all())


def realign_order(catalog_ids: np.ndarray, image_ids: np.ndarray) -> np.ndarray | None:
    """Catalogue row positions in image order when the catalogue holds exactly the stored ids, re-ordered;
    None when it does not (rows dropped, added or ids changed)."""
    if len(catalog_ids) != len(image_ids):
        return None
    position = pd.Index(pd.Series(catalog_ids).astype(str))
    if not position.is_unique:
        return None
    order = position.get_indexer(pd.Series(image_ids).astype(str))
    if (order < 0).any():
        return None
    if not same_ids(np.asarray(catalog_ids)[order], np.asarray(image_ids)):  # same text, another type (5 vs "5")
        return None
    return order


def link_catalog(catalog: pd.DataFrame, ids_path: Path, cat_path: Path,
                 complete: bool) -> tuple[pd.DataFrame, bool]:
    """``catalog`` checked against the ids its images were stored under (``ids_path``): unchanged, re-aligned to
    image order when it is a re-ordering of them (second value True), or a ValueError naming the first mismatch.
    Datasets written before ``image_ids.parquet`` existed are taken as they are."""
    if not ids_path.is_file():
        return catalog, False
    try:
        stored = pd.read_parquet(ids_path)["id"].to_numpy()
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{ids_path}: unreadable ({' '.join(str(exc).split())}); restore it or re-create the "
                         "dataset") from None
    ids = catalog["id"].to_numpy()
    if not complete:  # a writer is appending: rows beyond its last close are not recorded yet
        ids = ids[:len(stored)]
    if same_ids(ids, stored):
        return catalog, False
    order = realign_order(ids, stored) if complete else None
    if order is None:
        raise InputError(f"{cat_path}: does not match the stored images ({describe_mismatch(ids, stored)}); the "
                         "catalogue was edited (rows dropped or added, or ids changed): restore it from a backup or "
                         "re-create the dataset (to add columns, keep every row and its id)")
    return catalog.iloc[order].reset_index(drop=True), True
