"""Turn a folder of survey images (or a Galaxy Zoo / Kaggle / Galaxy10 release) into a packed dataset.

Preprocessing follows the paper (section 2): centre crop, grey scale by averaging the bands, antialiased
resize to ``size`` x ``size`` and storage as uint8. For the paper's 256 px SDSS cut-outs the default crop
of 0.75 is exactly its central 192 px (pixels 32..223). Fixed-scale cut-outs can instead be framed on each
galaxy's measured size and orientation (``crop="3xR90"``, ``derotate=True``; :mod:`astrovader.data.stamps`);
a frame with no source at its centre is then reported and skipped like an unreadable file. ``flux_level``
scales every stamp to the same mean grey level, so that a survey's range of surface brightness does not
dominate what a model learns about shape (:meth:`Crop.describe` records it, e.g. ``3xR90+derotate+flux20``).

Scale matters as much as correctness: decoding runs in worker processes on small batches with only a few
batches in flight, the writer commits every few thousand images, and a re-run of the same command on a
dataset that was killed part-way continues where the last commit stopped. Every input ends up in exactly
one of *written*, *skipped as duplicate*, *skipped without labels* or *failed*; the last three are listed
with reasons in ``ingest_report.csv`` inside the output directory.

FITS images hold floating-point fluxes with no natural 8-bit mapping. They are scaled with a fixed,
documented stretch (:func:`fits_stretch`): clip to the 0.5th..99.5th percentile of the finite pixels, then
``asinh(10 x) / asinh(10)``, which keeps faint outskirts visible without saturating the core; NaNs become
0. FITS rows are flipped so that the first row is the top of the image, as in JPEG/PNG files.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrovader.data.dataset import Dataset, DatasetWriter, atomic_write_bytes, is_dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
FITS_EXTENSIONS = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
REPORT_NAME = "ingest_report.csv"
DEFAULT_CROP = 0.75  # paper: central 192 of 256 px
DEFAULT_SIZE = 128
FLUX_LEVEL = 20.0  # mean grey level of a flux-normalised stamp: the median of unnormalised 3xR90 GZ1 stamps
SOURCES = ("folder", "kaggle", "gz2", "galaxy10")
_BATCH = 32  # files per worker task: large enough to amortise IPC, small enough to keep memory flat
_INT_RE = re.compile(r"^[+-]?\d+$")


class ImageReadError(Exception):
    """An input image that cannot be turned into a dataset row; the message is the reported reason."""


# ------------------------------------------------------------------------------------------------
# crop specification
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Crop:
    """Where each stamp is cut from its frame.

    A centre crop as a fraction of the shorter side (``fraction``) or an absolute side (``pixels``); or, with
    ``r90``, a galaxy frame: ``r90`` times the central galaxy's measured 90%-light radius on a side, centred
    on the galaxy (:mod:`astrovader.data.stamps`), which gives fixed-scale cut-outs the paper's
    Petrosian-scaled framing. ``derotate`` turns the central galaxy's major axis horizontal, in any mode.
    ``flux_level`` multiplies each finished stamp so its mean is that grey level (all bands together, so colours
    are kept): bright and faint galaxies of one shape then look alike. At ``FLUX_LEVEL`` = 20 about 5% of
    3xR90 GZ1 stamps clip a few core pixels at 255 (0.01% of all pixels)."""

    fraction: float | None = DEFAULT_CROP
    pixels: int | None = None
    r90: float | None = None
    derotate: bool = False
    flux_level: float | None = None

    @property
    def measures_galaxy(self) -> bool:
        return self.r90 is not None or self.derotate

    def side(self, height: int, width: int) -> int:
        short = min(height, width)
        if self.pixels is not None:
            if self.pixels > short:
                raise ImageReadError(f"image is {width}x{height} px, smaller than the {self.pixels} px crop")
            return int(self.pixels)
        return max(1, int(round(float(self.fraction or 1.0) * short)))

    def describe(self) -> str:
        if self.r90 is not None:
            base = f"{self.r90:g}xR90"
        else:
            base = f"{self.pixels}px" if self.pixels is not None else f"{self.fraction:g}"
        return (base + ("+derotate" if self.derotate else "")
                + (f"+flux{self.flux_level:g}" if self.flux_level is not None else ""))


_R90_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*[x*]?\s*r90\s*$", re.IGNORECASE)


def parse_crop(value: str | float | int | Crop | None, *, pixels: int | None = None,
               derotate: bool = False, flux_level: float | None = None) -> Crop:
    """Accept ``0.75``, ``"0.75"``, ``"192/256"`` (a fraction), ``"3xR90"`` (a galaxy frame) or ``pixels=192``;
    reject anything else. ``derotate`` and ``flux_level`` apply to any of them."""
    if flux_level is not None and not 0 < float(flux_level) < 255:
        raise ValueError(f"flux level must be a mean grey level in (0, 255), got {flux_level}")
    if pixels is not None:
        if value is not None and not isinstance(value, Crop):
            raise ValueError("give either a crop fraction (--crop) or a crop size in pixels (--crop-px), not both")
        if int(pixels) < 1:
            raise ValueError(f"--crop-px must be a positive number of pixels, got {pixels}")
        crop = Crop(fraction=None, pixels=int(pixels))
    elif value is None:
        crop = Crop()
    elif isinstance(value, Crop):
        crop = value
    elif (m := _R90_RE.match(str(value))) is not None:
        multiple = float(m.group(1))
        if not 0.5 <= multiple <= 50:
            raise ValueError(f"--crop: {value!r}: the galaxy frame must be 0.5 to 50 x R90 on a side")
        crop = Crop(fraction=None, r90=multiple)
    else:
        try:
            frac = float(Fraction(str(value).strip()))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"--crop: {value!r} is not a fraction; use e.g. 0.75 or 192/256, 3xR90 for a frame "
                             "scaled to each galaxy (or --crop-px 192 for pixels)") from None
        if not 0 < frac <= 1:
            raise ValueError(f"--crop: {value!r} = {frac:g} must be in (0, 1]; use --crop-px for a size in pixels")
        crop = Crop(fraction=frac)
    if derotate and not crop.derotate:
        crop = replace(crop, derotate=True)
    return replace(crop, flux_level=float(flux_level)) if flux_level is not None else crop


# ------------------------------------------------------------------------------------------------
# decoding and preprocessing (run in worker processes)
# ------------------------------------------------------------------------------------------------
def fits_stretch(data: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5, a: float = 10.0) -> np.ndarray:
    """Map float fluxes to 0..255: percentile clip, then asinh stretch (see module docstring)."""
    finite = np.isfinite(data)
    if not finite.any():
        raise ImageReadError("all-NaN FITS image (no finite pixel)")
    vals = data[finite]
    lo, hi = np.percentile(vals, [low_pct, high_pct])
    if not hi > lo:
        hi = lo + 1.0  # flat image: map everything to black rather than dividing by zero
    x = np.clip((np.where(finite, data, lo) - lo) / (hi - lo), 0.0, 1.0)
    return (np.arcsinh(a * x) / np.arcsinh(a) * 255.0).astype(np.float32)


def _decode_fits(path: Path) -> np.ndarray:
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdul:
            hdu = next((h for h in hdul if getattr(h, "is_image", False) and h.data is not None
                        and np.ndim(h.data) >= 2), None)
            if hdu is None:
                kinds = ", ".join(type(h).__name__ for h in hdul)
                raise ImageReadError(f"FITS file has no image HDU (HDUs: {kinds})")
            data = np.asarray(hdu.data, dtype=np.float64)
    except ImageReadError:
        raise
    except Exception as exc:  # astropy raises OSError, ValueError, TypeError... for broken files
        raise ImageReadError(f"unreadable FITS file ({type(exc).__name__}: {exc})") from None
    while data.ndim > 3 and data.shape[0] == 1:  # degenerate leading axes, e.g. (1, 1, H, W)
        data = data[0]
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim == 2:
        data = data[:, :, None]
    elif data.ndim == 3 and data.shape[0] == 3:
        data = np.moveaxis(data, 0, -1)  # FITS cubes are (band, y, x)
    else:
        raise ImageReadError(f"wrong number of bands: FITS image of shape {tuple(data.shape)}; "
                             "expected (H, W) or (3, H, W)")
    return fits_stretch(data[::-1])  # FITS row 0 is the bottom of the image


def _decode_pillow(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                arr = np.asarray(im, dtype=np.float64)
                # 16-bit PNGs use the full 0..65535 range; 32-bit "I" images are scaled the same way.
                return (np.clip(arr, 0, 65535) * (255.0 / 65535.0)).astype(np.float32)[:, :, None]
            if mode == "F":
                return fits_stretch(np.asarray(im, dtype=np.float64)[:, :, None])
            if mode in ("1", "P", "CMYK", "YCbCr"):
                im = im.convert("RGB" if mode != "1" else "L")
                mode = im.mode
            if mode == "RGBA":
                alpha = np.asarray(im.getchannel("A"))
                if alpha.min() < 255:
                    raise ImageReadError("wrong number of bands: 4 (RGBA with transparency); expected 1 or 3")
                im = im.convert("RGB")
                mode = "RGB"
            if mode not in ("L", "RGB"):
                raise ImageReadError(f"wrong number of bands: {len(im.getbands())} (mode {mode}); "
                                     "expected 1 (grey) or 3 (colour)")
            arr = np.asarray(im)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError("not an image (Pillow cannot identify the file format)") from None
    except OSError as exc:
        msg = str(exc)
        if "truncated" in msg.lower():
            raise ImageReadError(f"truncated image file ({msg})") from None
        raise ImageReadError(f"unreadable image ({msg})") from None
    except Exception as exc:  # decoder bugs on hostile input: report, never crash the ingest
        raise ImageReadError(f"unreadable image ({type(exc).__name__}: {exc})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr  # uint8: converting whole frames to float before cropping doubles the cost


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image file as (H, W, C) in 0..255 (uint8 or float32), C in {1, 3}, or raise ImageReadError."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError("zero bytes (empty file)")
    except OSError as exc:
        raise ImageReadError(f"cannot read file ({exc.strerror or exc})") from None
    if path.name.lower().endswith(FITS_EXTENSIONS):
        return _decode_fits(path)
    return _decode_pillow(path)


def preprocess(arr: np.ndarray, crop: Crop, size: int, colour: bool) -> np.ndarray:
    """Crop (centre or galaxy frame), grey (band mean) or colour, antialiased resize, optional flux
    normalisation; uint8 (C, size, size)."""
    from PIL import Image

    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    h, w, c = arr.shape
    if c not in (1, 3):
        raise ImageReadError(f"wrong number of bands: {c}; expected 1 or 3")
    if colour and c != 3:
        raise ImageReadError(f"wrong number of bands: {c} (grey image) but the dataset keeps colour (--colour)")
    if crop.measures_galaxy:
        planes = _galaxy_frame(arr, crop, size, colour)
    else:
        side = crop.side(h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        arr = arr[y0:y0 + side, x0:x0 + side]
        planes = [arr[:, :, k].astype(np.float32) for k in range(3)] if colour else [_grey(arr)]
    # Resize in float ("F" mode) so the band mean is not rounded twice; LANCZOS antialiases.
    planes = [p if p.shape == (size, size) else np.asarray(
        Image.fromarray(np.ascontiguousarray(p), mode="F").resize((size, size), Image.Resampling.LANCZOS))
        for p in planes]
    stack = np.stack(planes).astype(np.float32, copy=False)
    if crop.flux_level is not None:
        mean = float(stack.mean())
        if not mean > 0:
            raise ImageReadError("blank stamp (mean level 0): cannot normalise its flux")
        stack = stack * np.float32(crop.flux_level / mean)
    return np.clip(np.rint(stack), 0, 255).astype(np.uint8)


def _grey(arr: np.ndarray) -> np.ndarray:
    """The band mean of an (H, W, 1 or 3) image as float32 (the paper's grey scale)."""
    if arr.shape[2] == 1:
        return arr[:, :, 0].astype(np.float32)
    # explicit sum: much faster than mean(axis=2) on a strided uint8 view
    return (arr[:, :, 0].astype(np.float32) + arr[:, :, 1] + arr[:, :, 2]) / np.float32(3)


def _galaxy_frame(arr: np.ndarray, crop: Crop, size: int, colour: bool) -> list[np.ndarray]:
    """The stamp planes of a galaxy frame (``crop.r90``) or a derotated centre crop, at ``size`` px."""
    from astrovader.data.stamps import NoGalaxyError, galaxy_stamp, measure_galaxy

    h, w, _ = arr.shape
    grey = _grey(arr)
    try:
        shape = measure_galaxy(grey)
    except NoGalaxyError as exc:
        raise ImageReadError(f"galaxy frame {crop.describe()}: {exc}") from None
    if crop.r90 is not None:
        side = crop.r90 * shape.r90
    else:  # a fixed crop turned about the frame centre: only the orientation comes from the galaxy
        side = float(crop.side(h, w))
        shape = replace(shape, x=(w - 1) / 2.0, y=(h - 1) / 2.0)
    planes = [arr[:, :, k] for k in range(3)] if colour else [grey]
    return galaxy_stamp(planes, shape, side, size, crop.derotate)


def _read_h5_rows(path: str, key: str, rows: Sequence[int]) -> list[np.ndarray]:
    import h5py

    lo, hi = min(rows), max(rows) + 1
    with h5py.File(path, "r") as fh:
        block = np.asarray(fh[key][lo:hi])
    return [block[r - lo] for r in rows]


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
            h5_data = dict(zip(idx, _read_h5_rows(path, key, idx), strict=True))
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


# ------------------------------------------------------------------------------------------------
# inputs: what to ingest, with ids and labels
# ------------------------------------------------------------------------------------------------
class LabelRef:
    """Row ``row`` of a labels frame. Items keep this instead of a dict per image because dicts of a
    230-column GZ2 catalogue for 240k images would take gigabytes; rows are materialised per batch."""

    __slots__ = ("frame", "row")

    def __init__(self, frame: pd.DataFrame, row: int):
        self.frame, self.row = frame, row


def _label_records(refs: Sequence[LabelRef | None]) -> list[dict[str, Any] | None]:
    out: list[dict[str, Any] | None] = [None] * len(refs)
    by_frame: dict[int, list[int]] = {}
    for k, r in enumerate(refs):
        if r is not None:
            by_frame.setdefault(id(r.frame), []).append(k)
    for ks in by_frame.values():
        frame = refs[ks[0]].frame  # type: ignore[union-attr]
        recs = _frame_records(frame.iloc[[refs[k].row for k in ks]])  # type: ignore[union-attr]
        for k, rec in zip(ks, recs, strict=True):
            out[k] = rec
    return out


@dataclass
class Item:
    """One input: ``key`` names it in reports, ``ref`` tells a worker how to load it."""

    key: str
    ref: str | tuple[str, str, int]
    id: Any
    labels: LabelRef | None
    note: str = ""  # why an input without an id cannot be written


@dataclass
class IngestIssue:
    file: str
    status: str  # failed | duplicate | no_label | missing_image
    reason: str
    id: Any = None


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


def _coerce_ids(values: Iterable[Any]) -> list[Any]:
    """Ids as Python ints when every value is an integer literal (exactly, no float detour), else strings."""
    vals = ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).strip() for v in values]
    if vals and all(_INT_RE.match(v) for v in vals):
        ints = [int(v) for v in vals]
        if all(-(2**63) <= i < 2**63 for i in ints):
            return ints
    return vals


def find_images(src: Path) -> list[Path]:
    """Image files under ``src`` (recursive, hidden files skipped), sorted for a reproducible order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / name)
    return sorted(found)


def _stem(path: Path) -> str:
    name = path.name
    for ext in sorted(IMAGE_EXTENSIONS, key=len, reverse=True):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def read_labels_csv(path: Path, id_column: str | None) -> pd.DataFrame:
    """Read a labels table keeping the id (and ``file``) column as text so big integers stay exact."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} does not exist")
    header = pd.read_csv(path, nrows=0).columns
    text_cols = {c: str for c in header if c in ("file", id_column or "id")}
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype=text_cols, keep_default_na=True)


def _frame_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts with NumPy scalars unwrapped, so int64 ids do not round-trip through float."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def match_folder_labels(files: list[Path], src: Path, labels: pd.DataFrame | None, id_column: str | None,
                        labels_name: str = "labels") -> tuple[list[Item], list[IngestIssue]]:
    """Pair image files with label rows by relative ``file`` path or by id == file stem."""
    rels = [p.relative_to(src).as_posix() for p in files]
    issues: list[IngestIssue] = []
    if labels is None:
        ids = _coerce_ids(_stem(p) for p in files)
        return [Item(r, str(p), i, None) for p, r, i in zip(files, rels, ids, strict=True)], issues
    id_col = id_column or "id"
    has_file = "file" in labels.columns
    if id_col not in labels.columns and not has_file:
        raise ValueError(f"{labels_name}: no id column {id_col!r} and no 'file' column; columns are "
                         f"{list(labels.columns)} (choose the id column with --id-column)")
    label_cols = [c for c in labels.columns if c not in (id_col, "file")]
    label_ids = _coerce_ids(labels[id_col]) if id_col in labels.columns else None
    records = labels[label_cols].reset_index(drop=True)
    items: list[Item] = []
    if has_file:
        by_file: dict[str, int] = {}
        for row, f in enumerate(labels["file"].tolist()):
            if not isinstance(f, str) or not f.strip():
                raise ValueError(f"{labels_name}: row {row + 2}: empty 'file' field")
            key = Path(f.strip()).as_posix().removeprefix("./")
            if key in by_file:
                raise ValueError(f"{labels_name}: rows {by_file[key] + 2} and {row + 2} name the same file {f!r}")
            by_file[key] = row
        stem_ids = _coerce_ids(_stem(p) for p in files)
        used: set[int] = set()
        for p, rel, sid in zip(files, rels, stem_ids, strict=True):
            row = by_file.get(rel)
            if row is None:
                items.append(Item(rel, str(p), sid if label_ids is None else _coerce_one(sid, label_ids), None))
            else:
                used.add(row)
                items.append(Item(rel, str(p), label_ids[row] if label_ids is not None else sid,
                                  LabelRef(records, row)))
        for f, row in by_file.items():
            if row not in used:
                issues.append(IngestIssue(f, "missing_image", f"{labels_name} row {row + 2} names a file that "
                                          "was not found", label_ids[row] if label_ids is not None else None))
    else:
        by_id: dict[str, int] = {}
        for row, lid in enumerate(label_ids or []):
            k = str(lid)
            if k == "":
                raise ValueError(f"{labels_name}: row {row + 2}: empty {id_col!r} field")
            if k in by_id:
                raise ValueError(f"{labels_name}: rows {by_id[k] + 2} and {row + 2} have the same "
                                 f"{id_col} {lid!r}")
            by_id[k] = row
        stems = [_stem(p) for p in files]
        used = set()
        for p, rel, s in zip(files, rels, stems, strict=True):
            row = by_id.get(str(_coerce_ids([s])[0]))
            if row is None:
                items.append(Item(rel, str(p), None, None))
            else:
                used.add(row)
                items.append(Item(rel, str(p), label_ids[row], LabelRef(records, row)))  # type: ignore[index]
        unlabelled_ids = _coerce_ids(s for it, s in zip(items, stems, strict=True) if it.id is None)
        it_unl = iter(unlabelled_ids)
        for it in items:
            if it.id is None:
                it.id = _coerce_one(next(it_unl), label_ids or [])
        for k, row in by_id.items():
            if row not in used:
                issues.append(IngestIssue(k, "missing_image", f"{labels_name} row {row + 2} ({id_col}={k}) "
                                          "matches no image file stem", label_ids[row]))  # type: ignore[index]
    return items, issues


def _coerce_one(value: Any, like: list[Any]) -> Any:
    """An unlabelled file's id in the same type as the labelled ids (str when they are strings)."""
    if like and isinstance(like[0], str):
        return str(value)
    return value


def _unify_ids(items: list[Item]) -> list[Item]:
    """One id type per dataset: if any id is not an int (e.g. an unlabelled file named ``abc.jpg`` among
    numbered ones) all ids become strings, because a parquet column cannot mix the two."""
    if any(it.id is not None and not isinstance(it.id, int) for it in items):
        for it in items:
            if it.id is not None:
                it.id = str(it.id)
    return items


def gather_items(source: str, src: Path, *, labels: str | os.PathLike | None = None, id_column: str | None = None,
                 catalog: str | os.PathLike | None = None,
                 mapping: str | os.PathLike | None = None) -> tuple[list[Item], list[IngestIssue], dict[str, Any]]:
    """Inputs of one source kind, plus label issues and provenance for ``dataset.json``."""
    src = Path(src)
    if source not in SOURCES:
        raise ValueError(f"--source: {source!r} is not one of {', '.join(SOURCES)}")
    if source == "galaxy10":
        from astrovader.data.catalogs import read_galaxy10_catalog

        if not src.is_file():
            raise FileNotFoundError(f"Galaxy10 source {src} is not an HDF5 file")
        cat = read_galaxy10_catalog(src)
        frame = cat.drop(columns=["id"]).reset_index(drop=True)
        items = [Item(f"{src.name}[{i}]", ("images", str(src), i), int(i), LabelRef(frame, row))
                 for row, i in enumerate(cat["id"].tolist())]
        return items, [], {"source": "galaxy10", "source_path": str(src)}
    if not src.is_dir():
        raise FileNotFoundError(f"image folder {src} does not exist or is not a directory")
    if source == "folder":
        frame = read_labels_csv(Path(labels), id_column) if labels else None
        files = find_images(src)
        items, issues = match_folder_labels(files, src, frame, id_column, str(labels))
        return _unify_ids(items), issues, {"source": "folder", "source_path": str(src),
                                           "labels": str(labels) if labels else None}
    if source == "kaggle":
        from astrovader.data.catalogs import read_kaggle_solutions

        img_dir = src / "images_training_rev1" if (src / "images_training_rev1").is_dir() else src
        sol = Path(labels) if labels else next((p for p in (src / "training_solutions_rev1.csv",
                                                             src.parent / "training_solutions_rev1.csv")
                                                if p.is_file()), None)
        if sol is None:
            raise FileNotFoundError(f"{src}: no training_solutions_rev1.csv found (give it with --labels)")
        frame = read_kaggle_solutions(sol)
        items, issues = match_folder_labels(find_images(img_dir), img_dir, frame, "id", str(sol))
        return _unify_ids(items), issues, {"source": "kaggle", "source_path": str(img_dir), "labels": str(sol)}
    # gz2: images named by asset_id, mapping asset_id -> objid, catalogue keyed by objid
    from astrovader.data.catalogs import read_gz2, read_gz2_mapping

    if catalog is None or mapping is None:
        raise ValueError("--source gz2 needs --catalog (gz2_hart16.csv/.fits) and --mapping "
                         "(gz2_filename_mapping.csv)")
    cat = read_gz2(catalog)
    mp = read_gz2_mapping(mapping)
    files = find_images(src)
    asset_to_obj = dict(zip(mp["asset_id"].tolist(), mp["id"].tolist(), strict=True))
    cat_rows = {k: i for i, k in enumerate(cat["id"].tolist())}
    obj_to_asset = dict(zip(mp["id"].tolist(), mp["asset_id"].tolist(), strict=True))
    frame = cat.drop(columns=["id"]).reset_index(drop=True)
    frame["asset_id"] = cat["id"].map(obj_to_asset).astype("Int64").to_numpy()
    items = []
    issues: list[IngestIssue] = []
    seen_assets: set[int] = set()
    for p in files:
        rel = p.relative_to(src).as_posix()
        stem = _stem(p)
        asset = int(stem) if _INT_RE.match(stem) else None
        objid = asset_to_obj.get(asset) if asset is not None else None
        if objid is None:
            items.append(Item(rel, str(p), None, None, note=f"asset id {stem} is not in the mapping file {mapping}"))
            continue
        seen_assets.add(asset)  # type: ignore[arg-type]
        row = cat_rows.get(objid)
        items.append(Item(rel, str(p), objid, LabelRef(frame, row) if row is not None else None))
    for objid in set(cat_rows) - {asset_to_obj[a] for a in seen_assets}:
        issues.append(IngestIssue(str(objid), "missing_image", f"catalogue {catalog}: no image for objid "
                                  f"{objid}", objid))
    issues.sort(key=lambda i: i.file)
    return _unify_ids(items), issues, {"source": "gz2", "source_path": str(src), "catalog": str(catalog),
                           "mapping": str(mapping)}


# ------------------------------------------------------------------------------------------------
# the ingest driver
# ------------------------------------------------------------------------------------------------
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


def _make_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes, forked where possible: importing ``astrovader`` pulls in torch (seconds per
    worker), which a forked child inherits for free. Workers are started at once, before the writer or
    progress bar start any threads, so the fork is safe."""
    import multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method))
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
                  id_column: str | None = None, crop: str | float | Crop | None = DEFAULT_CROP,
                  size: int = DEFAULT_SIZE, colour: bool = False, workers: int | None = None,
                  append: bool = False, progress: bool = True, *, crop_px: int | None = None,
                  labels_only: bool = False, source: str = "folder", catalog: str | os.PathLike | None = None,
                  mapping: str | os.PathLike | None = None, commit_every: int = 4096,
                  log: Callable[[str], None] | None = None, derotate: bool = False,
                  flux_level: float | None = None) -> IngestReport:
    """Ingest images into the dataset at ``out``; see the module docstring for the guarantees.

    An existing *incomplete* dataset (a previous run was killed) is resumed: ids already committed are
    skipped. An existing complete dataset is only added to with ``append=True``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    crop_spec = parse_crop(None if crop_px is not None else crop, pixels=crop_px, derotate=derotate,
                           flux_level=flux_level)
    if int(size) < 1:
        raise ValueError(f"--size must be a positive number of pixels, got {size}")
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
    resuming = False
    if is_dataset(out):
        existing = Dataset(out)
        resuming = not existing.complete
        if not (append or resuming):
            raise FileExistsError(f"{out}: a complete dataset already exists; pass --append (append=True) to "
                                  "add images to it, or choose a new output directory")
        old_pre = existing.meta.get("preprocessing")
        if old_pre and {k: old_pre.get(k) for k in ("crop", "size", "colour")} != \
                {k: preprocessing[k] for k in ("crop", "size", "colour")}:
            raise ValueError(f"{out}: dataset was ingested with crop={old_pre.get('crop')}, "
                             f"size={old_pre.get('size')}, colour={old_pre.get('colour')}; this run uses "
                             f"crop={preprocessing['crop']}, size={size}, colour={bool(colour)}; "
                             "mixing preprocessing in one dataset is refused")
        sample = next((it.id for it in items if it.id is not None), None)
        if len(existing) and sample is not None:
            old_int = bool(np.issubdtype(existing.catalog["id"].dtype, np.integer))
            new_int = isinstance(sample, int)
            if old_int != new_int:
                raise ValueError(f"{out}: existing ids are {'integers' if old_int else 'strings'} but the new "
                                 f"inputs' ids are {'integers' if new_int else 'strings'} (e.g. {sample!r})")
    report = IngestReport(dataset=out, n_inputs=len(items))
    report.issues.extend(issues)

    meta = {"preprocessing": preprocessing, "provenance": provenance}
    channels = 3 if colour else 1
    with DatasetWriter(out, size, channels, append=is_dataset(out), meta=meta, commit_every=commit_every) as w:
        known = w.known_ids
        first_key: dict[Any, str] = {}
        todo: list[Item] = []
        for it in items:
            if it.id is None:
                report.n_skipped_unlabelled += 1
                report.issues.append(IngestIssue(it.key, "no_label", it.note or "no id for this input", None))
            elif it.id in known:
                report.n_skipped_duplicate += 1
                report.issues.append(IngestIssue(it.key, "duplicate", f"id {it.id} is already in the dataset",
                                                 it.id))
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
        del first_key
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
                label_rows = _label_records([it.labels for it in batch])
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
        report.n_total = len(w)
    report.seconds = time.perf_counter() - t0
    if not report.balanced:  # pragma: no cover - a bug, not a data problem
        raise RuntimeError(f"ingest accounting error: {report.summary()}")
    return report
