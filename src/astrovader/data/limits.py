"""What astrovader accepts from files made elsewhere: sizes checked before decoding, names that stay names.

Nothing read from a dataset, catalogue or image is ever executed, and no reader allocates memory for a size an
input merely declares: every image reader checks the declared width x height against one pixel limit before it
decodes, tables are refused past a column limit before pandas parses them, and catalogue ids become file names
only when they are plain names. The limits are deliberately generous for cut-outs (a stamp is rarely above
1,000 x 1,000 pixels) and can be raised for one command through the environment:

- ``ASTROVADER_MAX_PIXELS``: the largest image (width x height) any reader decodes (default 16,777,216,
  i.e. 4096 x 4096);
- ``ASTROVADER_MAX_COLUMNS``: the most columns a CSV catalogue or labels table may have (default 10,000).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from astrovader.errors import InputError

DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_COLUMNS = 10_000
# Model stamps are square and at most this many pixels a side: the paper uses 128; 2048 is already ~16k times
# its memory per image, and a larger value is a typo or a hostile file, not a survey.
MAX_STAMP_SIZE = 2048
# Windows device names that cannot be file names there, whatever the extension.
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


class InputLimitError(InputError):
    """An input larger than a limit astrovader enforces; the message names the file, the size and the setting."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise InputLimitError(f"environment variable {name}={raw!r} is not a whole number") from None
    if value < 1:
        raise InputLimitError(f"environment variable {name}={raw!r} must be at least 1")
    return value


def max_image_pixels() -> int:
    """The largest width x height any image reader decodes (``ASTROVADER_MAX_PIXELS``)."""
    return _env_int("ASTROVADER_MAX_PIXELS", DEFAULT_MAX_PIXELS)


def max_table_columns() -> int:
    """The most columns a CSV table may have (``ASTROVADER_MAX_COLUMNS``)."""
    return _env_int("ASTROVADER_MAX_COLUMNS", DEFAULT_MAX_COLUMNS)


def check_image_pixels(height: int, width: int, where: str | os.PathLike, bands: int = 1) -> None:
    """Refuse an image whose declared size exceeds the pixel limit, before anything is decoded.

    ``height`` x ``width`` is compared with :func:`max_image_pixels`, and ``height`` x ``width`` x ``bands``
    (colour planes, FITS cube slices) with three times it, so that a cube of many small planes is bounded too.
    Whether the number of bands suits a stamp is the reader's question, not this one.
    """
    height, width, bands = int(height), int(width), int(bands)
    if min(height, width, bands) < 0:
        raise InputLimitError(f"{where}: declares a negative image dimension ({height} x {width} x {bands})")
    limit = max_image_pixels()
    if height * width > limit or height * width * bands > 3 * limit:
        planes = f" x {bands:,} bands" if bands != 1 else ""
        raise InputLimitError(
            f"{where}: declares {width:,} x {height:,} pixels{planes}, above the limit of {limit:,} pixels per "
            "image (3 bands); cut a stamp out of it first, or raise ASTROVADER_MAX_PIXELS if you mean it")


def check_stamp_size(size: object, where: str) -> int:
    """A stamp size (pixels a side) from a config or dataset, as an int within 1..MAX_STAMP_SIZE."""
    try:
        value = int(size)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise InputLimitError(f"{where}: image size {size!r} is not a whole number") from None
    if isinstance(size, bool) or value != size or not 1 <= value <= MAX_STAMP_SIZE:
        raise InputLimitError(f"{where}: image size {size!r} is outside 1..{MAX_STAMP_SIZE} pixels; "
                              "fix the value (stamps are cut-outs, not survey images)")
    return value


def check_csv_columns(path: str | os.PathLike, max_header_bytes: int = 8 * 2**20) -> None:
    """Refuse a CSV file whose header row has more columns than :func:`max_table_columns`, reading only the
    header (at most ``max_header_bytes``), so a million-column file is refused at once instead of parsed."""
    limit = max_table_columns()
    with open(path, "rb") as fh:
        head = fh.read(max_header_bytes)
    line = head.split(b"\n", 1)[0]
    if b"\n" not in head and len(head) == max_header_bytes:
        raise InputLimitError(f"{path}: the header row is longer than {max_header_bytes:,} bytes; "
                              "is this a CSV table?")
    text = line.decode("utf-8", "replace")
    n = len(next(csv.reader([text]), []))
    if n > limit:
        raise InputLimitError(f"{path}: {n:,} columns, above the limit of {limit:,}; keep the columns you need "
                              "(or raise ASTROVADER_MAX_COLUMNS)")


def read_csv_checked(path: str | os.PathLike, **kwargs):
    """``pandas.read_csv`` of a table from elsewhere: its columns counted first (:func:`check_csv_columns`) and a
    file that is not UTF-8 refused with a line naming it and the fix, instead of a codec traceback."""
    import pandas as pd

    check_csv_columns(path)
    try:
        return pd.read_csv(path, encoding="utf-8", **kwargs)
    except UnicodeDecodeError as exc:
        raise InputLimitError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start:,}); "
                              "save it as UTF-8, e.g. `iconv -f cp1252 -t utf-8 IN.csv > OUT.csv`") from None


def plain_file_name(name: object) -> str | None:
    """``name`` as text when it can be a file name inside a folder, else None.

    A plain name has no directory part (``Path(name).name == name`` on every platform, so no ``/``, ``\\``
    or drive), is not empty, ``.`` or ``..``, has no control characters and is not a reserved device name.
    """
    if name is None:
        return None
    if isinstance(name, float) and name != name:  # NaN: an empty cell
        return None
    text = str(name)
    if not text or text.strip() != text or text in (".", "..") or len(text.encode("utf-8")) > 200:
        return None
    if any(c in text for c in "/\\:\0") or any(ord(c) < 32 or ord(c) == 127 for c in text):
        return None
    if Path(text).name != text or text.split(".")[0].lower() in _RESERVED:
        return None
    return text
