"""Readers for Galaxy Zoo catalogues, all mapped onto one internal schema.

Internal schema (columns present where the source has them):

- ``id`` (int64; SDSS DR7 objid for GZ2, GalaxyID for Kaggle, row number for Galaxy10), ``ra``, ``dec``,
  ``petro_r90`` (arcsec, r band);
- one short name per decision-tree answer (``smooth``, ``featured``, ``artifact``, ``edge_on``,
  ``not_edge_on``, ``bar``, ``no_bar``, ``spiral``, ``no_spiral``, bulge, odd, roundness, odd-feature, bulge
  shape, arm winding and arm number answers; see :data:`GZ2_ANSWERS`) with a suffix saying what it is:
  ``_count`` (votes), ``_fraction`` (votes / votes on that question), ``_weighted_fraction``,
  ``_debiased`` (Hart et al. 2016 redshift-debiased fraction), ``_flag``, ``_weight``; Kaggle's values are
  ``_cumulative_fraction`` because the Galaxy Challenge multiplied each fraction by those of the answers
  leading to its question, so they are *not* comparable with GZ2 ``_fraction``;
- ``total_votes``, ``total_classifications`` and ``first_question_votes`` (votes on "smooth, features or
  star/artifact", the quantity behind the paper's cut of more than 36).

Short names make selection code readable (``cat.smooth_debiased > 0.8``) and the same code works on any
source. Integer ids are parsed from text, never via float, so 18-digit objids survive exactly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from astrovader.data.limits import read_csv_checked
from astrovader.errors import InputError

# GZ2 answer number -> short name (Willett et al. 2013, table 2). Kaggle ClassN.M follow the same order.
GZ2_ANSWERS: dict[int, str] = {
    1: "smooth", 2: "featured", 3: "artifact",
    4: "edge_on", 5: "not_edge_on",
    6: "bar", 7: "no_bar",
    8: "spiral", 9: "no_spiral",
    10: "no_bulge", 11: "bulge_just_noticeable", 12: "bulge_obvious", 13: "bulge_dominant",
    14: "odd", 15: "not_odd",
    16: "completely_round", 17: "in_between", 18: "cigar_shaped",
    19: "ring", 20: "lens_or_arc", 21: "disturbed", 22: "irregular", 23: "other", 24: "merger", 38: "dust_lane",
    25: "bulge_rounded", 26: "bulge_boxy", 27: "bulge_none",
    28: "arms_tight", 29: "arms_medium", 30: "arms_loose",
    31: "arms_1", 32: "arms_2", 33: "arms_3", 34: "arms_4", 36: "arms_more_than_4", 37: "arms_cant_tell",
}

KAGGLE_CLASSES: dict[str, str] = {}
_KAGGLE_ORDER = {1: [1, 2, 3], 2: [4, 5], 3: [6, 7], 4: [8, 9], 5: [10, 11, 12, 13], 6: [14, 15],
                 7: [16, 17, 18], 8: [19, 20, 21, 22, 23, 24, 38], 9: [25, 26, 27], 10: [28, 29, 30],
                 11: [31, 32, 33, 34, 36, 37]}
for _q, _answers in _KAGGLE_ORDER.items():
    for _j, _a in enumerate(_answers, start=1):
        KAGGLE_CLASSES[f"Class{_q}.{_j}"] = GZ2_ANSWERS[_a]

FIRST_QUESTION = ("smooth", "featured", "artifact")
_GZ2_COL = re.compile(r"^t\d\d_[a-z0-9_]+?_a(\d\d)_[a-z0-9_]+?"
                      r"_(count|weight|weighted_fraction|fraction|debiased|flag)$")
_ID_ALIASES = ("id", "dr7objid", "objid", "specobjid", "galaxyid")
_PETRO_ALIASES = ("petro_r90", "petror90_r", "petror90")


class CatalogError(InputError):
    """A catalogue file lacks a required column or holds a malformed value (message names file and field)."""


def _read_table(path: str | os.PathLike, text_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """CSV/Parquet via pandas, FITS via astropy; id-like columns kept as text in CSV so they stay exact."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"catalogue {path} does not exist")
    name = path.name.lower()
    if name.endswith((".fits", ".fit", ".fits.gz", ".fit.gz")):
        from astropy.table import Table

        tab = Table.read(path)
        cols = [c for c in tab.colnames if len(tab[c].shape) <= 1]  # multi-dimensional columns do not fit a frame
        frame = tab[cols].to_pandas()
        frame.columns = [c.lower() for c in frame.columns]
        for c in frame.columns:
            if frame[c].dtype == object and len(frame) and isinstance(frame[c].iloc[0], bytes):
                frame[c] = frame[c].str.decode("ascii").str.strip()
        return frame
    if name.endswith(".parquet"):
        frame = pd.read_parquet(path)
        frame.columns = [str(c) for c in frame.columns]
        return frame
    header = read_csv_checked(path, nrows=0).columns
    dtypes = {c: str for c in header if c.lower() in text_columns}
    return read_csv_checked(path, dtype=dtypes)


def _to_int64(values: pd.Series, path: Path | str, column: str) -> pd.Series:
    """Exact int64 from text or integer columns; names the first bad row instead of rounding through float."""
    if pd.api.types.is_integer_dtype(values):
        return values.astype(np.int64)
    text = values.astype(str).str.strip()
    bad = ~text.str.fullmatch(r"[+-]?\d+")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise CatalogError(f"{path}: row {row + 2}, column {column!r}: {values.iloc[row]!r} is not an integer id")
    return pd.Series([int(v) for v in text], index=values.index, dtype=np.int64)


def _find(frame: pd.DataFrame, aliases: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in frame.columns}
    return next((lower[a] for a in aliases if a in lower), None)


def _add_first_question_votes(frame: pd.DataFrame) -> pd.DataFrame:
    counts = [f"{a}_count" for a in FIRST_QUESTION]
    if "first_question_votes" not in frame.columns and all(c in frame.columns for c in counts):
        frame["first_question_votes"] = frame[counts].sum(axis=1).astype(np.int64)
    return frame


def read_gz2(path: str | os.PathLike) -> pd.DataFrame:
    """Galaxy Zoo 2 main table (Hart et al. 2016 ``gz2_hart16``, CSV or FITS) in the internal schema."""
    path = Path(path)
    raw = _read_table(path, text_columns=_ID_ALIASES)
    id_col = _find(raw, _ID_ALIASES)
    if id_col is None:
        raise CatalogError(f"{path}: no objid column (looked for {', '.join(_ID_ALIASES)}); columns start "
                           f"{list(raw.columns)[:8]}")
    out = pd.DataFrame({"id": _to_int64(raw[id_col], path, id_col)})
    for src, dst in (("ra", "ra"), ("dec", "dec")):
        if src in raw.columns:
            out[dst] = raw[src].astype(float)
    petro = _find(raw, _PETRO_ALIASES)
    if petro:
        out["petro_r90"] = raw[petro].astype(float)
    renamed: dict[str, pd.Series] = {}
    for c in raw.columns:
        m = _GZ2_COL.match(c.lower())
        if m:
            answer = GZ2_ANSWERS.get(int(m.group(1)))
            if answer is None:
                raise CatalogError(f"{path}: column {c!r} names unknown answer a{m.group(1)}")
            renamed[f"{answer}_{m.group(2)}"] = raw[c]
        elif c not in (id_col, "ra", "dec", petro):
            renamed[c.lower()] = raw[c]
    out = pd.concat([out, pd.DataFrame(renamed, index=raw.index)], axis=1)
    if out["id"].duplicated().any():
        dup = out.loc[out["id"].duplicated(), "id"].iloc[0]
        raise CatalogError(f"{path}: objid {dup} appears more than once")
    return _add_first_question_votes(out)


def read_gz2_mapping(path: str | os.PathLike) -> pd.DataFrame:
    """``gz2_filename_mapping.csv``: columns ``id`` (objid), ``asset_id`` (image file stem), ``sample``."""
    path = Path(path)
    raw = _read_table(path, text_columns=("objid", "dr7objid", "asset_id"))
    id_col = _find(raw, ("objid", "dr7objid", "id"))
    if id_col is None or "asset_id" not in raw.columns:
        raise CatalogError(f"{path}: needs columns objid and asset_id; found {list(raw.columns)}")
    out = pd.DataFrame({"id": _to_int64(raw[id_col], path, id_col),
                        "asset_id": _to_int64(raw["asset_id"], path, "asset_id")})
    if "sample" in raw.columns:
        out["sample"] = raw["sample"].astype(str)
    return out


def read_kaggle_solutions(path: str | os.PathLike) -> pd.DataFrame:
    """Kaggle Galaxy Challenge ``training_solutions_rev1.csv`` (GalaxyID + 37 ClassN.M columns)."""
    path = Path(path)
    raw = _read_table(path, text_columns=("galaxyid",))
    id_col = _find(raw, ("galaxyid", "id"))
    if id_col is None:
        raise CatalogError(f"{path}: no GalaxyID column; found {list(raw.columns)[:8]}")
    missing = [c for c in KAGGLE_CLASSES if c not in raw.columns]
    if missing:
        raise CatalogError(f"{path}: missing vote-fraction columns {missing[:5]}{'...' if len(missing) > 5 else ''}")
    out = pd.DataFrame({"id": _to_int64(raw[id_col], path, id_col)})
    for c, name in KAGGLE_CLASSES.items():
        out[f"{name}_cumulative_fraction"] = raw[c].astype(float)
    return out


def read_catalog(path: str | os.PathLike) -> pd.DataFrame:
    """Any catalogue with an id and positions (for downloads): GZ2 columns are renamed when present."""
    path = Path(path)
    raw = _read_table(path, text_columns=_ID_ALIASES)
    if any(_GZ2_COL.match(c.lower()) for c in raw.columns) or "dr7objid" in raw.columns:
        return read_gz2(path)
    id_col = _find(raw, _ID_ALIASES)
    if id_col is None:
        raise CatalogError(f"{path}: no id column (looked for {', '.join(_ID_ALIASES)})")
    out = raw.rename(columns={id_col: "id"})
    out["id"] = _to_int64(raw[id_col], path, id_col) if raw[id_col].astype(str).str.fullmatch(
        r"\s*[+-]?\d+\s*").all() else raw[id_col].map(lambda v: None if pd.isna(v) else str(v))  # empty stays empty
    petro = _find(out, _PETRO_ALIASES)
    if petro and petro != "petro_r90":
        out = out.rename(columns={petro: "petro_r90"})
    lower = {c: c.lower() for c in out.columns if c.lower() in ("ra", "dec")}
    return out.rename(columns=lower)


# -- Galaxy10 -----------------------------------------------------------------------------------
GALAXY10_IMAGES = "images"
GALAXY10_LABELS = "ans"


def read_galaxy10_catalog(path: str | os.PathLike) -> pd.DataFrame:
    """Galaxy10 (SDSS or DECaLS) HDF5 as a catalogue: ``id`` = row, ``galaxy10_class`` from ``ans``, plus any
    other per-galaxy 1-D datasets (ra, dec, redshift, pxscale in DECaLS). Images are not loaded."""
    import h5py

    path = Path(path)
    with h5py.File(path, "r") as fh:
        if GALAXY10_IMAGES not in fh:
            raise CatalogError(f"{path}: no '{GALAXY10_IMAGES}' dataset; found {list(fh.keys())}")
        shape = fh[GALAXY10_IMAGES].shape
        if len(shape) != 4 or shape[-1] != 3:
            raise CatalogError(f"{path}: '{GALAXY10_IMAGES}' has shape {shape}; expected (N, H, W, 3)")
        n = shape[0]
        out = pd.DataFrame({"id": np.arange(n, dtype=np.int64)})
        for key in fh:
            ds = fh[key]
            if key == GALAXY10_IMAGES or not hasattr(ds, "shape") or ds.shape != (n,):
                continue
            name = "galaxy10_class" if key == GALAXY10_LABELS else key.lower()
            out[name] = np.asarray(ds[:])
    return out


def iter_galaxy10(path: str | os.PathLike, chunk: int = 1024) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_row, uint8 images (n, H, W, 3))`` blocks so a 2.7 GB file never sits in memory."""
    import h5py

    with h5py.File(path, "r") as fh:
        images = fh[GALAXY10_IMAGES]
        for start in range(0, images.shape[0], chunk):
            yield start, np.asarray(images[start:start + chunk])
