"""The one on-disk dataset format used by every astrovader command.

A dataset is a directory::

    DATASET/
        images.zarr      uint8 array, shape (N, C, H, W), chunked along N
        catalog.parquet  one row per image, in image order, keyed by a unique ``id`` column
        dataset.json     format version, image geometry, provenance, ``complete`` flag

The catalogue is the commit point: the dataset holds exactly as many images as it has rows. A writer
appends pixels first and then the new rows, as one more file ``catalog.parts/part-NNNNNN.parquet`` written
atomically (so a commit costs the same however large the dataset already is); closing the writer
consolidates the parts into ``catalog.parquet``. A kill at any moment leaves either the previous committed
state (extra pixel rows beyond the catalogue are ignored and trimmed on the next append) or the new one.
``dataset.json`` says ``"complete": false`` while a writer is open.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from astrovader.data.columns import concat_catalogs, records_frame
from astrovader.data.fingerprint import IMAGE_IDS, chunk_digest, ids_digest, link_catalog
from astrovader.data.locks import exclusive
from astrovader.data.outputs import temporary_name
from astrovader.data.store import ImageStoreError, check_image_store
from astrovader.errors import DatasetError

FORMAT_NAME = "astrovader-dataset"
FORMAT_VERSION = 1
IMAGES = "images.zarr"
CATALOG = "catalog.parquet"
CATALOG_PARTS = "catalog.parts"
META = "dataset.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix."""
    path = Path(path)
    tmp = temporary_name(path, "")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_write_parquet(path: Path, frame: pd.DataFrame, metadata: dict[str, str] | None = None) -> None:
    """``frame`` as Parquet at ``path``, written to a temporary name and renamed; ``metadata`` (str -> str) is
    added to the schema's key-value metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    tmp = temporary_name(path, "")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_catalog_file(path: str | os.PathLike) -> pd.DataFrame:
    """The committed catalogue of a dataset directory: ``catalog.parquet`` plus any uncommitted-to-file parts."""
    path = Path(path)
    frames = [pd.read_parquet(path / CATALOG)] if (path / CATALOG).is_file() else []
    parts_dir = path / CATALOG_PARTS
    if parts_dir.is_dir():
        frames += [pd.read_parquet(p) for p in sorted(parts_dir.glob("part-*.parquet"))]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({"id": pd.Series([], dtype="int64")})
    return frames[0] if len(frames) == 1 else concat_catalogs(frames)


def write_catalog(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    """Replace a dataset's whole catalogue (e.g. after adding a column) atomically, folding in any parts."""
    path = Path(path)
    atomic_write_parquet(path / CATALOG, frame)
    parts_dir = path / CATALOG_PARTS
    if parts_dir.is_dir():
        for p in parts_dir.glob("*.parquet"):
            p.unlink()
        parts_dir.rmdir()


def _check_ids(ids: pd.Series, where: Path) -> None:
    """Every id present and unique: predictions and labels are joined on it."""
    null = np.flatnonzero(ids.isna().to_numpy())
    if len(null):
        raise DatasetError(f"{where}: {len(null)} rows have no id (first at row {null[0]}); every image needs a "
                           "unique id: fix the catalogue or re-ingest")
    dup = ids.duplicated(keep=False).to_numpy()
    if dup.any():
        rows = np.flatnonzero(dup)
        raise DatasetError(f"{where}: id {ids.iloc[rows[0]]!r} appears more than once (rows "
                           f"{', '.join(map(str, rows[:4]))}{', ...' if len(rows) > 4 else ''}); ids must be "
                           "unique: fix the catalogue or re-ingest")


def is_dataset(path: str | os.PathLike) -> bool:
    return (Path(path) / META).is_file()


class Dataset:
    """Read access to a packed dataset; images are read lazily from the chunked zarr store.

    A dataset directory holds ``images.zarr`` (uint8, (N, C, H, W), row 0 the top of each image),
    ``catalog.parquet`` (one row per image, keyed by a unique ``id``) and ``dataset.json``. Opening one checks that
    the catalogue and the images still belong together (by their recorded ids) and refuses a damaged one.

    Parameters
    ----------
    path : path-like
        The dataset directory.

    Raises
    ------
    DatasetError
        The directory is not a dataset, or its metadata, catalogue or ids are damaged or inconsistent.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_path = self.path / META
        if not meta_path.is_file():
            raise DatasetError(f"{self.path}: not an astrovader dataset (no {META}); build one with "
                               "`astrovader ingest` or `astrovader simulate`")
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{meta_path}: not valid JSON ({exc}); restore the file or re-create the dataset "
                               "with `astrovader ingest`") from None
        if not isinstance(self.meta, dict):
            raise DatasetError(f"{meta_path}: expected a JSON object, found {type(self.meta).__name__}")
        if self.meta.get("format") != FORMAT_NAME:
            raise DatasetError(f"{meta_path}: field 'format' is {self.meta.get('format')!r}, "
                               f"expected {FORMAT_NAME!r}")
        cat_path = self.path / CATALOG
        try:
            self.catalog: pd.DataFrame = read_catalog_file(self.path)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{cat_path}: unreadable catalogue ({' '.join(str(exc).split())})") from None
        if "id" not in self.catalog.columns:
            raise DatasetError(f"{cat_path}: catalogue has no 'id' column")
        recorded = self.meta.get("n")
        if self.complete and recorded is not None and len(self.catalog) != recorded:
            missing = "is missing" if not cat_path.is_file() else f"has {len(self.catalog)} rows"
            raise DatasetError(f"{cat_path}: {missing} but {META} records n={recorded} images; restore "
                               f"{CATALOG} or re-create the dataset")
        _check_ids(self.catalog["id"], cat_path)
        self.realigned = self._link_rows_to_images(cat_path)
        try:
            self._chunk_key = check_image_store(self.path / IMAGES)
        except ImageStoreError as exc:
            raise DatasetError(str(exc)) from None
        try:
            self.images = zarr.open_array(str(self.path / IMAGES), mode="r")
        except Exception as exc:  # noqa: BLE001  # zarr raises several types for a missing/broken store
            raise DatasetError(f"{self.path / IMAGES}: cannot open image store ({exc})") from exc
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DatasetError(f"{self.path / IMAGES}: expected uint8 (N, C, H, W), found "
                               f"{self.images.dtype} {self.images.shape}")
        if self.images.shape[0] < len(self.catalog):
            raise DatasetError(f"{self.path}: catalogue lists {len(self.catalog)} images but the image store "
                               f"holds only {self.images.shape[0]}; the dataset is corrupt")

    def _link_rows_to_images(self, cat_path: Path) -> bool:
        """Re-align a re-ordered catalogue to the stored images (True) or refuse an edited one (see
        :func:`~astrovader.data.fingerprint.link_catalog`)."""
        try:
            self.catalog, realigned = link_catalog(self.catalog, self.path / IMAGE_IDS, cat_path, self.complete)
        except ValueError as exc:
            raise DatasetError(str(exc)) from None
        return realigned

    # geometry -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.catalog)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[2])

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete", True))

    @property
    def ids(self) -> np.ndarray:
        return self.catalog["id"].to_numpy()

    @property
    def chunk_rows(self) -> int:
        return int(self.images.chunks[0])

    def __repr__(self) -> str:
        return (f"Dataset({str(self.path)!r}, n={len(self)}, channels={self.channels}, "
                f"size={self.image_size}, columns={list(self.catalog.columns)})")

    # reading ------------------------------------------------------------------------------------
    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Contiguous rows ``start:stop`` as a uint8 array (clipped to the committed length). A chunk file that
        is missing or cannot be decoded raises a DatasetError naming it, rather than reading as zeros."""
        n = len(self)
        stop = n if stop is None else min(stop, n)
        if stop <= start:
            return np.zeros((0, self.channels, self.image_size, self.image_size), np.uint8)
        chunk = self.chunk_rows
        for c in range(start // chunk, (stop - 1) // chunk + 1):
            if not self.chunk_path(c).is_file():
                raise DatasetError(f"{self.chunk_path(c)}: image chunk {c} (rows {c * chunk}..{(c + 1) * chunk - 1}) "
                                   "is missing; restore it from a backup or re-create the dataset "
                                   "(`astrovader check` lists every damaged chunk)")
        try:
            return np.asarray(self.images[start:stop])
        except Exception as exc:  # noqa: BLE001 - zarr and its codecs raise many types for damaged bytes
            first, last = start // chunk, (stop - 1) // chunk
            raise DatasetError(f"{self.path / IMAGES}: cannot decode image chunk(s) {first}..{last} "
                               f"({type(exc).__name__}: {' '.join(str(exc).split())}); the file is damaged: "
                               "restore it or re-create the dataset (`astrovader check` names it)") from None

    def chunk_path(self, index: int) -> Path:
        """The file of image chunk ``index`` (one chunk spans C, H and W), in the store's own key scheme."""
        return self.path / IMAGES / self._chunk_key(index)

    def take(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Images at arbitrary rows, in the order given.

        Parameters
        ----------
        indices : sequence of int or ndarray
            Row numbers in 0..N-1.

        Returns
        -------
        ndarray of shape (len(indices), C, H, W)
            uint8 images.
        """
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            return np.zeros((0, self.channels, self.image_size, self.image_size), np.uint8)
        if idx.min() < 0 or idx.max() >= len(self):
            raise IndexError(f"index out of range for dataset of {len(self)} images")
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        # Reading whole chunks and picking rows is much faster than zarr's per-row selection.
        out = np.empty((idx.size, self.channels, self.image_size, self.image_size), np.uint8)
        chunk = self.chunk_rows
        pos = 0
        while pos < sorted_idx.size:
            c0 = (sorted_idx[pos] // chunk) * chunk
            end = np.searchsorted(sorted_idx, c0 + chunk, side="left")
            block = self.read(int(c0), min(int(c0) + chunk, len(self)))
            out[order[pos:end]] = block[sorted_idx[pos:end] - c0]
            pos = end
        return out

    def load(self) -> np.ndarray:
        return self.read(0, len(self))

    def iter_chunks(self, rows: int | None = None, start: int = 0,
                    stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, uint8 block)`` over ``start:stop`` with bounded memory."""
        rows = rows or max(self.chunk_rows, 1024)
        stop = len(self) if stop is None else min(stop, len(self))
        for s in range(start, stop, rows):
            yield s, self.read(s, min(s + rows, stop))

    def split_indices(self, name: str) -> np.ndarray:
        """Row indices whose ``split`` column equals ``name`` (all rows if there is no split column)."""
        if "split" not in self.catalog.columns:
            return np.arange(len(self))
        return np.flatnonzero(self.catalog["split"].astype(str).to_numpy() == name)


class DatasetWriter:
    """Create a dataset, or append to an existing one, in committed batches.

    Use as a context manager; ``add`` buffers catalogue rows and appends pixels, ``commit`` (called every
    ``commit_every`` images and on close) makes everything added so far durable.
    """

    def __init__(self, path: str | os.PathLike, image_size: int, channels: int, *, append: bool = False,
                 chunk_rows: int = 256, meta: dict[str, Any] | None = None, commit_every: int = 4096):
        self.path = Path(path)
        self._lock = exclusive(self.path)  # one writer per dataset, held until close
        self._lock.__enter__()
        try:
            self._open(image_size, channels, append, chunk_rows, meta, commit_every)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.__exit__(None, None, None)

    def _open(self, image_size: int, channels: int, append: bool, chunk_rows: int, meta: dict[str, Any] | None,
              commit_every: int) -> None:
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.commit_every = commit_every
        img_path = self.path / IMAGES
        if is_dataset(self.path):
            if not append:
                raise DatasetError(f"{self.path}: dataset already exists; pass append=True (CLI: --append) "
                                   "to add to it, or choose a new output directory")
            existing = Dataset(self.path)
            if (existing.image_size, existing.channels) != (self.image_size, self.channels):
                raise DatasetError(
                    f"{self.path}: cannot append {self.channels}x{self.image_size}px images to a dataset of "
                    f"{existing.channels}x{existing.image_size}px images")
            self.meta = existing.meta
            self._catalog = existing.catalog
            self.images = zarr.open_array(str(img_path), mode="r+").with_config({"write_empty_chunks": True})
            if self.images.shape[0] > len(self._catalog):  # pixels of an interrupted, uncommitted write
                self.images.resize((len(self._catalog), *self.images.shape[1:]))
        else:
            if self.path.exists() and any(self.path.iterdir()):
                raise DatasetError(f"{self.path}: directory exists and is not empty")
            self.path.mkdir(parents=True, exist_ok=True)
            self.images = zarr.create_array(
                store=str(img_path), shape=(0, self.channels, self.image_size, self.image_size),
                chunks=(chunk_rows, self.channels, self.image_size, self.image_size), dtype="uint8",
                config={"write_empty_chunks": True})  # every chunk has a file, so a missing one is damage
            self.meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
            self._catalog = pd.DataFrame({"id": pd.Series([], dtype="int64")})
        self._n_committed = len(self._catalog)
        self._n_at_open = self._n_committed
        self._next_part = len(list((self.path / CATALOG_PARTS).glob("part-*.parquet")))
        self.meta.update(meta or {})
        self.meta.update(image_size=self.image_size, channels=self.channels, complete=False)
        atomic_write_json(self.path / META, self.meta)
        self._known_ids: set = set(self._catalog["id"].tolist())
        self._catalog = self._catalog.iloc[:0]  # rows live on disk; keep only the schema in memory
        self._pending_rows: list[dict[str, Any]] = []
        self._pending_images: list[np.ndarray] = []
        self._pending_n = 0

    @property
    def known_ids(self) -> set:
        """Ids already in the dataset or added since (for duplicate detection and resuming)."""
        return self._known_ids

    def __len__(self) -> int:
        return self._n_committed + self._pending_n

    def add(self, images: np.ndarray, rows: Sequence[dict[str, Any]] | pd.DataFrame) -> None:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[:, None]
        expected = (self.channels, self.image_size, self.image_size)
        if images.dtype != np.uint8 or images.shape[1:] != expected:
            raise DatasetError(f"images must be uint8 of shape (n, {expected[0]}, {expected[1]}, {expected[2]}),"
                               f" got {images.dtype} {images.shape}")
        records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
        if len(records) != len(images):
            raise DatasetError(f"{len(images)} images but {len(records)} catalogue rows")
        for r in records:
            if "id" not in r:
                raise DatasetError(f"catalogue row has no 'id' field: {r}")
            if r["id"] in self._known_ids:
                raise DatasetError(f"duplicate id {r['id']!r} in {self.path}")
            self._known_ids.add(r["id"])
        self._pending_images.append(images)
        self._pending_rows.extend(records)
        self._pending_n += len(images)
        if self._pending_n >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        if self._pending_n:
            # Block by block into one resized array, not one concatenated copy: a copy of tens of MB is fresh
            # memory on every commit, and first-touching it cost more than compressing it (benchmarks/RESULTS.md).
            start = self.images.shape[0]
            self.images.resize((start + self._pending_n, *self.images.shape[1:]))
            for block in self._pending_images:
                self.images[start:start + len(block)] = block
                start += len(block)
            parts_dir = self.path / CATALOG_PARTS
            parts_dir.mkdir(exist_ok=True)
            atomic_write_parquet(parts_dir / f"part-{self._next_part:06d}.parquet",
                                 records_frame(self._pending_rows))
            self._next_part += 1
            self._n_committed += self._pending_n
            self._pending_images, self._pending_rows, self._pending_n = [], [], 0
        elif not (self.path / CATALOG).exists() and not (self.path / CATALOG_PARTS).exists():
            atomic_write_parquet(self.path / CATALOG, self._catalog)

    def close(self, complete: bool = True) -> None:
        self.commit()
        catalog = read_catalog_file(self.path)
        if (self.path / CATALOG_PARTS).is_dir():
            write_catalog(self.path, catalog)  # one consolidation, at the end
        self._record_fingerprint(catalog["id"])
        self._catalog = pd.DataFrame({"id": pd.Series([], dtype="int64")})  # no longer needed in memory
        self.meta["complete"] = complete
        self.meta["n"] = self._n_committed
        atomic_write_json(self.path / META, self.meta)
        self._release()

    def _record_fingerprint(self, ids: pd.Series) -> None:
        """``image_ids.parquet`` and the chunk digests in dataset.json (see :mod:`astrovader.data.fingerprint`);
        chunks the writer did not touch keep their recorded digests."""
        atomic_write_parquet(self.path / IMAGE_IDS, pd.DataFrame({"id": ids}))
        rows = int(self.images.chunks[0])
        old = self.meta.get("fingerprint", {}) if isinstance(self.meta.get("fingerprint"), dict) else {}
        digests = list(old.get("chunks", []))[: self._n_at_open // rows]
        values = ids.tolist()
        for c in range(len(digests), -(-self._n_committed // rows)):
            lo, hi = c * rows, min((c + 1) * rows, self._n_committed)
            digests.append(chunk_digest(values[lo:hi], np.asarray(self.images[lo:hi])))
        self.meta["fingerprint"] = {"ids": ids_digest(values), "chunks": digests, "chunk_rows": rows}

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On error keep what was committed and leave the dataset marked incomplete.
        if exc_type is None:
            self.close(complete=True)
        else:
            try:
                self.commit()
            finally:
                self._release()


def write_dataset(path: str | os.PathLike, images: np.ndarray, catalog: pd.DataFrame | None = None,
                  meta: dict[str, Any] | None = None) -> Dataset:
    """Write a whole in-memory array of images and their catalogue as a dataset.

    Parameters
    ----------
    path : path-like
        The new dataset directory.
    images : ndarray of shape (N, C, H, W) or (N, H, W)
        uint8 images, row 0 the top of each image.
    catalog : pandas.DataFrame, optional
        One row per image with a unique ``id`` column (default: ids 0..N-1).
    meta : dict, optional
        Extra ``dataset.json`` fields (for example ``pixel_scale_arcsec`` or ``pixel_stretch``).

    Returns
    -------
    Dataset
        The dataset written.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, None]
    if catalog is None:
        catalog = pd.DataFrame({"id": np.arange(len(images), dtype=np.int64)})
    with DatasetWriter(path, images.shape[-1], images.shape[1], meta=meta,
                       commit_every=max(len(images), 1)) as w:
        w.add(images, catalog)
    return Dataset(path)


def open_dataset(path: str | os.PathLike | Dataset) -> Dataset:
    """A :class:`Dataset` for a path (a Dataset is returned as it is).

    Parameters
    ----------
    path : path-like or Dataset
        The dataset directory.

    Returns
    -------
    Dataset
        The opened dataset.
    """
    return path if isinstance(path, Dataset) else Dataset(path)
