"""Where a dataset's inputs come from: the image files of a folder, paired with a labels table, or one of the
Galaxy Zoo / Kaggle / Galaxy10 releases, and what each source's cut-outs need by default.

Every input becomes an :class:`Item` (its report key, how to read it, its id and its label row); problems found
before any image is read (a label row without an image, an image without an id) become :class:`IngestIssue`\\ s.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from astrovader.data.decode import IMAGE_EXTENSIONS
from astrovader.data.limits import read_csv_checked
from astrovader.data.stamps import Crop
from astrovader.errors import InputError

SOURCES = ("folder", "kaggle", "gz2", "galaxy10")
# Canonical integers only: "012345", "+12345" and "12345" are three different names, so ids become integers only
# when every one is written the way Python would write that integer (otherwise all ids stay strings, as given).
_INT_RE = re.compile(r"^(0|-?[1-9]\d*)$")
# The crop each source's cut-outs need when none is given; used by the API and the CLI alike.
SOURCE_CROPS = {
    "folder": Crop(fraction=0.75),  # the paper's SDSS cut-outs: the central 192 of 256 px
    "kaggle": Crop(fraction=None, pixels=192),  # 424 px frames at the paper's 0.02 x petroR90 per pixel
    "gz2": Crop(fraction=None, pixels=192),  # the same frames as kaggle
    "galaxy10": Crop(fraction=1.0),  # Galaxy10 images are already tight cut-outs
}


class LabelRef:
    """Row ``row`` of a labels frame. Items keep this instead of a dict per image because dicts of a
    230-column GZ2 catalogue for 240k images would take gigabytes; rows are materialised per batch."""

    __slots__ = ("frame", "row")

    def __init__(self, frame: pd.DataFrame, row: int):
        self.frame, self.row = frame, row


def label_records(refs: Sequence[LabelRef | None]) -> list[dict[str, Any] | None]:
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


def _coerce_ids(values: Iterable[Any]) -> list[Any]:
    """Ids as Python ints when every value is a canonical integer literal (exactly, no float detour), else the
    strings exactly as given (file stems or the label column)."""
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
    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path)
    header = read_csv_checked(path, nrows=0).columns
    text_cols = {c: str for c in header if c in ("file", id_column or "id")}
    return read_csv_checked(path, dtype=text_cols, keep_default_na=True)


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
        raise InputError(f"{labels_name}: no id column {id_col!r} and no 'file' column; columns are "
                         f"{list(labels.columns)} (choose the id column with --id-column)")
    label_cols = [c for c in labels.columns if c not in (id_col, "file")]
    label_ids = _coerce_ids(labels[id_col]) if id_col in labels.columns else None
    records = labels[label_cols].reset_index(drop=True)
    items: list[Item] = []
    if has_file:
        by_file: dict[str, int] = {}
        for row, f in enumerate(labels["file"].tolist()):
            if not isinstance(f, str) or not f.strip():
                raise InputError(f"{labels_name}: row {row + 2}: empty 'file' field")
            key = Path(f.strip()).as_posix().removeprefix("./")
            if key in by_file:
                raise InputError(f"{labels_name}: rows {by_file[key] + 2} and {row + 2} name the same file {f!r}")
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
        prefix = src.name + "/"
        if not used and any(k.startswith(prefix) and k[len(prefix):] in set(rels) for k in by_file):
            example = next(k for k in by_file if k.startswith(prefix))
            raise InputError(f"{labels_name}: its 'file' column names paths like {example!r}, relative to the folder "
                             f"above {src}; give that folder ({src.parent}) as the image folder, or remove the "
                             f"'{prefix}' prefix from the column")
        for f, row in by_file.items():
            if row not in used:
                issues.append(IngestIssue(f, "missing_image", f"{labels_name} row {row + 2} names a file that "
                                          "was not found", label_ids[row] if label_ids is not None else None))
    else:
        by_id: dict[str, int] = {}
        for row, lid in enumerate(label_ids or []):
            k = str(lid)
            if k == "":
                raise InputError(f"{labels_name}: row {row + 2}: empty {id_col!r} field")
            if k in by_id:
                raise InputError(f"{labels_name}: rows {by_id[k] + 2} and {row + 2} have the same "
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
        raise InputError(f"--source: {source!r} is not one of {', '.join(SOURCES)}")
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
        raise InputError("--source gz2 needs --catalog (gz2_hart16.csv/.fits) and --mapping "
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
