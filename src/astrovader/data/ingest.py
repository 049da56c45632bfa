"""Turn a folder of survey images (or a Galaxy Zoo / Kaggle / Galaxy10 release) into a packed dataset.

The driver: inputs come from :mod:`~astrovader.data.sources`, are decoded by :mod:`~astrovader.data.decode` and
made into stamps by :mod:`~astrovader.data.stamps`, in worker processes.

Scale matters as much as correctness: decoding runs in worker processes on small batches with only a few
batches in flight, the writer commits every few thousand images, and a re-run of the same command on a
dataset that was killed part-way continues where the last commit stopped. Every input ends up in exactly
one of *written*, *skipped as duplicate*, *skipped without labels* or *failed*; the last three are listed
with reasons in ``ingest_report.csv`` inside the output directory. A frame with no source at its centre
(galaxy frames, ``crop="3xR90"``) is reported and skipped like an unreadable file.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrovader.data.dataset import Dataset, DatasetWriter, atomic_write_bytes, is_dataset
from astrovader.data.decode import IMAGE_EXTENSIONS, ImageReadError, decode_image, read_h5_rows
from astrovader.data.sources import SOURCE_CROPS, SOURCES, IngestIssue, Item, gather_items, label_records
from astrovader.data.stamps import DEFAULT_SIZE, Crop, parse_crop, preprocess
from astrovader.errors import InputError

REPORT_NAME = "ingest_report.csv"
_BATCH = 32  # files per worker task: large enough to amortise IPC, small enough to keep memory flat


def _process_batch(refs: Sequence[str | tuple[str, str, int]], crop: Crop, size: int,
                   colour: bool) -> list[tuple[np.ndarray | None, str | None]]:
    """Decode + preprocess a batch; failures come back as reasons, never exceptions."""
    out: list[tuple[np.ndarray | None, str | None]] = []
    h5_rows = [r for r in refs if isinstance(r, tuple)]
    h5_data: dict[int, np.ndarray] = {}
    if h5_rows:
        key, path = h5_rows[0][0], h5_rows[0][1]
        idx = [int(r[2]) for r in h5_rows]
        try:
            h5_data = dict(zip(idx, read_h5_rows(path, key, idx), strict=True))
        except Exception as exc:
            return [(None, f"cannot read HDF5 rows ({type(exc).__name__}: {exc})")] * len(refs)
    for ref in refs:
        try:
            if isinstance(ref, tuple):
                arr = np.asarray(h5_data[int(ref[2])])
                if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
                    arr = np.moveaxis(arr, 0, -1)
            else:
                arr = decode_image(ref)
            out.append((preprocess(arr, crop, size, colour), None))
        except ImageReadError as exc:
            out.append((None, str(exc)))
        except Exception as exc:  # keep the batch alive; the file is reported with the reason
            out.append((None, f"unexpected error ({type(exc).__name__}: {exc})"))
    return out


@dataclass
class IngestReport:
    """Outcome of one ingest run. ``n_inputs == n_written + n_skipped_duplicate + n_skipped_unlabelled
    + n_failed`` always holds; ``missing_images`` are label rows that matched no image (not inputs)."""

    dataset: Path
    n_inputs: int = 0
    n_read: int = 0
    n_written: int = 0
    n_skipped_duplicate: int = 0
    n_skipped_unlabelled: int = 0
    n_failed: int = 0
    n_total: int = 0  # images in the dataset after this run
    issues: list[IngestIssue] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failures(self) -> list[IngestIssue]:
        return [i for i in self.issues if i.status == "failed"]

    @property
    def missing_images(self) -> list[IngestIssue]:
        return [i for i in self.issues if i.status == "missing_image"]

    @property
    def balanced(self) -> bool:
        return self.n_inputs == (self.n_written + self.n_skipped_duplicate + self.n_skipped_unlabelled
                                 + self.n_failed)

    def summary(self) -> str:
        rate = self.n_read / self.seconds if self.seconds > 0 else float("nan")
        lines = [
            f"inputs {self.n_inputs:,} = written {self.n_written:,} + skipped as duplicate "
            f"{self.n_skipped_duplicate:,} + skipped without labels {self.n_skipped_unlabelled:,} + failed "
            f"{self.n_failed:,}",
            f"read {self.n_read:,} images in {self.seconds:.1f} s ({rate:.0f} images/s); dataset {self.dataset} "
            f"now holds {self.n_total:,} images",
        ]
        if self.missing_images:
            lines.append(f"{len(self.missing_images):,} label rows matched no image")
        if self.issues:
            lines.append(f"details: {self.dataset / REPORT_NAME}")
        return "\n".join(lines)


def _run_batches(batches: Iterator[list[Item]], crop: Crop, size: int, colour: bool,
                 pool: ProcessPoolExecutor | None,
                 workers: int) -> Iterator[tuple[list[Item], list[tuple[np.ndarray | None, str | None]]]]:
    """Decode batches in order, with at most ``3 * workers`` batches in flight (bounded memory)."""
    if pool is None:
        for b in batches:
            yield b, _process_batch([it.ref for it in b], crop, size, colour)
        return
    pending: deque[tuple[list[Item], Future]] = deque()
    try:
        for b in batches:
            pending.append((b, pool.submit(_process_batch, [it.ref for it in b], crop, size, colour)))
            if len(pending) >= 3 * workers:
                done, fut = pending.popleft()
                yield done, fut.result()
        while pending:
            done, fut = pending.popleft()
            yield done, fut.result()
    finally:
        for _, fut in pending:
            fut.cancel()


def _die_with_parent(parent: int) -> None:
    """In a worker: end when the ingest that started it ends, even if it is killed (SIGKILL leaves no chance to
    shut the pool down). Linux only (prctl PR_SET_PDEATHSIG); elsewhere the pool's own shutdown does it."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        except OSError:
            return
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)


def _make_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes, forked where possible: importing ``astrovader`` pulls in torch (seconds per
    worker), which a forked child inherits for free. Workers are started at once, before the writer or
    progress bar start any threads, so the fork is safe."""
    import multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method), initializer=_die_with_parent,
                               initargs=(os.getpid(),))
    pool.submit(int).result()  # starts all workers now (fork pools spawn every worker on first submit)
    return pool


def _chunks(items: list[Item], n: int) -> Iterator[list[Item]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def write_report(path: Path, issues: Sequence[IngestIssue]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["file", "id", "status", "reason"])
    for i in issues:
        w.writerow([i.file, "" if i.id is None else i.id, i.status, i.reason])
    atomic_write_bytes(path, buf.getvalue().encode())


def ingest_folder(src: str | os.PathLike, out: str | os.PathLike, labels: str | os.PathLike | None = None,
                  id_column: str | None = None, crop: str | float | Crop | None = None,
                  size: int = DEFAULT_SIZE, colour: bool = False, workers: int | None = None,
                  append: bool = False, progress: bool = True, *, crop_px: int | None = None,
                  labels_only: bool = False, source: str = "folder", catalog: str | os.PathLike | None = None,
                  mapping: str | os.PathLike | None = None, commit_every: int = 4096,
                  log: Callable[[str], None] | None = None, derotate: bool = False,
                  flux_level: float | None = None) -> IngestReport:
    """Ingest images into the dataset at ``out``; see the module docstring for the guarantees.

    ``crop`` (or ``crop_px``) defaults to the source's usual crop (``SOURCE_CROPS``). An existing *incomplete*
    dataset (a previous run was killed) is resumed: ids already committed are skipped. An existing complete
    dataset is only added to with ``append=True``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if source not in SOURCES:
        raise InputError(f"--source: {source!r} is not one of {', '.join(SOURCES)}")
    if crop is None and crop_px is None:
        crop = SOURCE_CROPS[source]  # the source's own default, the same from the API and the CLI
    crop_spec = parse_crop(None if crop_px is not None else crop, pixels=crop_px, derotate=derotate,
                           flux_level=flux_level)
    if int(size) < 1:
        raise InputError(f"--size must be a positive number of pixels, got {size}")
    size = int(size)
    workers = max(1, int(workers if workers is not None else (os.cpu_count() or 1)))
    pool = _make_pool(workers) if workers > 1 else None
    try:
        return _ingest(src, out, labels, id_column, crop_spec, size, colour, workers, pool, append, progress,
                       labels_only, source, catalog, mapping, commit_every, log, t0)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _ingest(src, out, labels, id_column, crop_spec: Crop, size: int, colour: bool, workers: int,
            pool: ProcessPoolExecutor | None, append: bool, progress: bool, labels_only: bool, source: str,
            catalog, mapping, commit_every: int, log, t0: float) -> IngestReport:
    items, issues, provenance = gather_items(source, Path(src), labels=labels, id_column=id_column,
                                             catalog=catalog, mapping=mapping)
    if not items:
        raise FileNotFoundError(f"{src}: no input images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    preprocessing = {"crop": crop_spec.describe(), "size": size, "colour": bool(colour),
                     "grey": "mean of bands" if not colour else None,
                     "resize": ("Gaussian pre-smoothing + Pillow bilinear affine (astrovader.data.stamps)"
                                if crop_spec.measures_galaxy else "Pillow LANCZOS"),
                     "fits_stretch": "percentile 0.5-99.5 clip + asinh(10x)/asinh(10)"}
    resuming = _check_existing(Path(out), items, preprocessing, append)
    report = IngestReport(dataset=out, n_inputs=len(items))
    report.issues.extend(issues)

    meta = {"preprocessing": preprocessing, "provenance": provenance}
    channels = 3 if colour else 1
    with DatasetWriter(out, size, channels, append=is_dataset(out), meta=meta, commit_every=commit_every) as w:
        todo = _new_items(items, w.known_ids, labels_only, report)
        if log and resuming:
            log(f"resuming {out}: {len(w):,} images already committed")
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), unit="img", desc="ingest", smoothing=0.05)
        try:
            for batch, results in _run_batches(_chunks(todo, _BATCH), crop_spec, size, bool(colour), pool,
                                                workers):
                imgs, rows = [], []
                label_rows = label_records([it.labels for it in batch])
                for it, (img, reason), lab in zip(batch, results, label_rows, strict=True):
                    if img is None:
                        report.n_failed += 1
                        report.issues.append(IngestIssue(it.key, "failed", reason or "unknown error", it.id))
                        continue
                    row = {"id": it.id, "file": it.key}
                    if lab:
                        row.update({k: v for k, v in lab.items() if k not in ("id", "file")})
                    imgs.append(img)
                    rows.append(row)
                if imgs:
                    w.add(np.stack(imgs), rows)
                report.n_read += len(imgs)
                report.n_written += len(imgs)
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
            report.seconds = time.perf_counter() - t0
            write_report(out / REPORT_NAME, report.issues)
        if len(w) == 0 and report.n_failed:
            first = next(i for i in report.issues if i.status == "failed")
            raise InputError(f"{src}: none of the {report.n_failed} images could be read (first: {first.file}: "
                             f"{first.reason}); every reason is in {out / REPORT_NAME}")
        report.n_total = len(w)
    report.seconds = time.perf_counter() - t0
    if not report.balanced:  # pragma: no cover - a bug, not a data problem
        raise RuntimeError(f"ingest accounting error: {report.summary()}")
    return report


def _check_existing(out: Path, items: list[Item], preprocessing: dict[str, Any], append: bool) -> bool:
    """Whether ingest resumes an interrupted dataset at ``out``; refuses to add to a complete one without
    ``append``, or to mix preprocessing or id types in one dataset."""
    if not is_dataset(out):
        return False
    existing = Dataset(out)
    resuming = not existing.complete
    if not (append or resuming):
        raise FileExistsError(f"{out}: a complete dataset already exists; pass --append (append=True) to "
                              "add images to it, or choose a new output directory")
    old_pre = existing.meta.get("preprocessing")
    if old_pre and {k: old_pre.get(k) for k in ("crop", "size", "colour")} != \
            {k: preprocessing[k] for k in ("crop", "size", "colour")}:
        raise InputError(f"{out}: dataset was ingested with crop={old_pre.get('crop')}, "
                         f"size={old_pre.get('size')}, colour={old_pre.get('colour')}; this run uses "
                         f"crop={preprocessing['crop']}, size={preprocessing['size']}, "
                         f"colour={preprocessing['colour']}; "
                         "mixing preprocessing in one dataset is refused")
    sample = next((it.id for it in items if it.id is not None), None)
    if len(existing) and sample is not None:
        old_int = bool(pd.api.types.is_integer_dtype(existing.catalog["id"].dtype))
        new_int = isinstance(sample, int)
        if old_int != new_int:
            raise InputError(f"{out}: existing ids are {'integers' if old_int else 'strings'} but the new "
                             f"inputs' ids are {'integers' if new_int else 'strings'} (e.g. {sample!r})")
    return resuming


def _new_items(items: list[Item], known: set, labels_only: bool, report: IngestReport) -> list[Item]:
    """The inputs to read: those with an id not yet in the dataset nor seen before in the input (and a label row
    with ``labels_only``); every other one is counted and reported in ``report``."""
    first_key: dict[Any, str] = {}
    todo: list[Item] = []
    for it in items:
        if it.id is None:
            report.n_skipped_unlabelled += 1
            report.issues.append(IngestIssue(it.key, "no_label", it.note or "no id for this input", None))
        elif it.id in known:
            report.n_skipped_duplicate += 1
            report.issues.append(IngestIssue(it.key, "duplicate", f"id {it.id} is already in the dataset", it.id))
        elif it.id in first_key:
            report.n_skipped_duplicate += 1
            report.issues.append(IngestIssue(it.key, "duplicate", f"duplicate id {it.id} within the input "
                                             f"(first seen in {first_key[it.id]})", it.id))
        elif labels_only and it.labels is None:
            report.n_skipped_unlabelled += 1
            report.issues.append(IngestIssue(it.key, "no_label", "no label row (--labels-only)", it.id))
        else:
            first_key[it.id] = it.key
            todo.append(it)
    return todo
