"""Reading one image file (JPEG, PNG, FITS) or one row of an HDF5 release as an (H, W, C) array in 0..255.

Orientation convention (the whole package's): row 0 of every array is the **top** of the image, as in JPEG and
PNG files and as survey viewers show cut-outs. FITS stores row 0 at the bottom (ds9 draws it there), so FITS
rows are flipped on reading; a FITS file and a PNG of the same picture give the same array.

FITS images hold floating-point fluxes with no natural 8-bit mapping. They are scaled with a fixed, documented
stretch (:func:`fits_stretch`): clip to the 0.5th..99.5th percentile of the finite pixels, then
``asinh(10 x) / asinh(10)``, which keeps faint outskirts visible without saturating the core; NaNs and -inf
become 0 and +inf (saturated pixels) 255.

Every reader checks the size an image declares (PNG/JPEG header, FITS ``NAXISn``) against the pixel limit of
:mod:`astrovader.data.limits` before decoding its pixels, so a small file that declares a huge image (a
decompression bomb) is refused by name instead of exhausting memory.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from astrovader.data.limits import InputLimitError, check_image_pixels, max_image_pixels
from astrovader.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
FITS_EXTENSIONS = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")


class ImageReadError(InputError):
    """An input image that cannot be turned into a dataset row; the message is the reported reason."""


def fits_stretch(data: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5, a: float = 10.0) -> np.ndarray:
    """Map float fluxes to 0..255: percentile clip, then asinh stretch (see module docstring)."""
    finite = np.isfinite(data)
    if not finite.any():
        raise ImageReadError("all-NaN FITS image (no finite pixel)")
    vals = data[finite]
    lo, hi = np.percentile(vals, [low_pct, high_pct])
    if not hi > lo:
        hi = lo + 1.0  # flat image: map everything to black rather than dividing by zero
    # NaN (no data) is sky, 0; +inf (a saturated pixel) is the brightest level and -inf the faintest.
    filled = np.where(np.isposinf(data), hi, np.where(finite, data, lo))
    x = np.clip((filled - lo) / (hi - lo), 0.0, 1.0)
    return (np.arcsinh(a * x) / np.arcsinh(a) * 255.0).astype(np.float32)


def _image_hdu(hdul, path: Path):
    """The first HDU holding an image of two or more axes, its declared size checked before its data is read."""
    for h in hdul:
        if not getattr(h, "is_image", False):
            continue
        naxis = int(h.header.get("NAXIS", 0))
        dims = [int(h.header.get(f"NAXIS{i}", 0)) for i in range(1, naxis + 1)]  # x first, as FITS lists them
        if naxis < 2 or 0 in dims:
            continue
        planes = 1
        for d in dims[2:]:
            planes *= d
        check_image_pixels(dims[1], dims[0], path, bands=planes)
        return h
    return None


def _decode_fits(path: Path) -> np.ndarray:
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            hdu = _image_hdu(hdul, path)
            if hdu is None or hdu.data is None:
                kinds = ", ".join(type(h).__name__ for h in hdul)
                raise ImageReadError(f"FITS file has no image HDU (HDUs: {kinds})")
            data = np.asarray(hdu.data, dtype=np.float64)
    except InputLimitError as exc:
        raise ImageReadError(str(exc).removeprefix(f"{path}: ")) from None
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

    limit = max_image_pixels()
    Image.MAX_IMAGE_PIXELS = limit  # Pillow's own bomb guard, at our limit rather than its default
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                check_image_pixels(im.size[1], im.size[0], path)  # the header's size, before any pixel is decoded
                im.load()
                return _pillow_array(im)
    except InputLimitError as exc:
        raise ImageReadError(str(exc).removeprefix(f"{path}: ")) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"declares an image above the limit of {limit:,} pixels (Pillow: {exc}); refused as "
                             "a possible decompression bomb; raise ASTROVADER_MAX_PIXELS if you mean it") from None
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


def _pillow_array(im) -> np.ndarray:
    """A loaded Pillow image as (H, W, C), C in {1, 3}; opaque alpha is dropped, transparency refused."""
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
    if mode in ("RGBA", "LA"):
        alpha = np.asarray(im.getchannel("A"))
        if alpha.min() < 255:
            raise ImageReadError(f"wrong number of bands: {len(mode)} ({mode} with transparency); "
                                 "expected 1 or 3")
        im = im.convert("RGB" if mode == "RGBA" else "L")
        mode = im.mode
    if mode not in ("L", "RGB"):
        raise ImageReadError(f"wrong number of bands: {len(im.getbands())} (mode {mode}); "
                             "expected 1 (grey) or 3 (colour)")
    arr = np.asarray(im)
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


def read_h5_rows(path: str, key: str, rows: Sequence[int]) -> list[np.ndarray]:
    import h5py

    lo, hi = min(rows), max(rows) + 1
    with h5py.File(path, "r") as fh:
        block = np.asarray(fh[key][lo:hi])
    return [block[r - lo] for r in rows]
