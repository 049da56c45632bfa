"""Writing outputs that other programs and people open: temporary names, leftovers of killed commands, and text
that FITS readers and spreadsheets take as data.

- Every output is first written to a temporary name in its folder, ``.<name>.tmp-<pid><suffix>``, and renamed
  over the final name when complete, so a kill leaves the old file or the new one, never a half-written one.
- A temporary file left by a killed command is removed by the next run of it, but only when the process that
  made it is gone: two jobs writing beside each other never delete each other's files.
- FITS headers and string columns hold ASCII only. Non-ASCII text (a path with ``é``, a component named
  ``α``) is written with Python's backslash escapes (``\\xe9``, ``\\u03b1``), which ``codecs.decode(value,
  "unicode_escape")`` reverses; Parquet outputs keep the original UTF-8 text.
- CSV cells that a spreadsheet would run as a formula (text starting with ``=``, ``+``, ``-``, ``@``, a tab
  or a carriage return) get a leading apostrophe, the OWASP-recommended neutralisation; numbers are untouched.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

import pandas as pd

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def temporary_name(path: str | os.PathLike, suffix: str | None = None) -> Path:
    """This process's temporary name for ``path`` (same folder, hidden, ending in ``suffix`` or path's suffix)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix if suffix is None else suffix}")


def process_alive(pid: object) -> bool:
    """Whether process ``pid`` runs on this host (this process counts; another user's too)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of ``path`` left by processes that are no longer running; return them.

    The output's name is escaped before it becomes a pattern, so an output literally named ``*.parquet`` only
    ever matches its own temporaries.
    """
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    pattern = re.compile(r"\.tmp-(\d+)")
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        match = pattern.match(tmp.name[len(path.name) + 1:])
        if match and not process_alive(int(match.group(1))):
            if tmp.is_dir():
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def fits_text(value: object) -> str:
    """``value`` as ASCII text for a FITS header or string column (non-ASCII characters backslash-escaped)."""
    return str(value).encode("ascii", "backslashreplace").decode("ascii")


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells cannot run as spreadsheet formulas (see the module docstring)."""
    out = frame.copy()
    for col in out.columns:
        series = out[col]
        if series.dtype.kind in "biufcmM":
            continue
        out[col] = series.map(lambda v: "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v)
    out.columns = [("'" + c if isinstance(c, str) and c.startswith(_FORMULA_START) else c) for c in out.columns]
    return out


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """``frame`` as UTF-8 CSV at ``path``, formula-safe (:func:`csv_safe`) and written atomically."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        csv_safe(frame).to_csv(tmp, index=False, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def swap_in(built: Path, final: Path) -> None:
    """Replace folder ``final`` by the complete folder ``built`` (same parent): two renames, the old folder
    removed after. A kill between them leaves the old folder as ``.<name>.old-<pid>`` beside, never a mix."""
    import shutil

    if not final.exists():
        os.replace(built, final)
        return
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    os.replace(final, old)
    os.replace(built, final)
    shutil.rmtree(old, ignore_errors=True)
