"""Catalogue columns that keep their types: an integer or boolean column stays integer or boolean when some rows
lack it (pandas' nullable ``Int64`` / ``boolean``), instead of becoming float with NaN, so a class label 3 never
comes back as 3.0. Used by every catalogue writer and reader of :mod:`astrovader.data.dataset`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def _nullable(kinds: set[str]) -> str | None:
    """The nullable dtype for a column whose non-missing values are all of ``kinds`` (NumPy kind codes)."""
    if kinds and kinds <= {"i", "u"}:
        return "Int64"
    if kinds == {"b"}:
        return "boolean"
    return None


def records_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Catalogue rows as a frame in which an integer or boolean column stays integer or boolean when some rows
    lack it (nullable ``Int64`` / ``boolean``), instead of becoming float with NaN: a class label 3 must not
    come back as 3.0. Decided by the values' types, never their values, so a float column stays float."""
    frame = pd.DataFrame.from_records(records)
    for col in frame.columns:
        if frame[col].dtype.kind in "iub" or not frame[col].isna().any():
            continue
        # the records, not the frame: from_records has already turned missing ints into float NaN
        dtype = _nullable({_type_kind(type(v)) for r in records if (v := r.get(col)) is not None})
        if dtype:
            frame[col] = frame[col].astype(dtype)
    return frame


def concat_catalogs(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Stack catalogue parts; a column that is integer (or boolean) in every part holding values stays so,
    even where some parts lack it or hold only missing values in it."""
    out = pd.concat(frames, ignore_index=True)
    for col in out.columns:
        if out[col].dtype.kind in "iub" or isinstance(out[col].dtype, pd.api.extensions.ExtensionDtype):
            continue
        kinds = {_kind(f[col].dtype) for f in frames if col in f.columns and f[col].notna().any()}
        dtype = _nullable(kinds)
        if dtype:
            out[col] = out[col].astype(dtype)
    return out


def _type_kind(t: type) -> str:
    if issubclass(t, (bool, np.bool_)):  # before int: bool is an int subclass
        return "b"
    return "i" if issubclass(t, (int, np.integer)) else "O"


def _kind(dtype: Any) -> str:
    if isinstance(dtype, pd.BooleanDtype):
        return "b"
    if pd.api.types.is_integer_dtype(dtype):
        return "i"
    return np.dtype(dtype).kind if not isinstance(dtype, pd.api.extensions.ExtensionDtype) else "O"
