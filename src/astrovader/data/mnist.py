"""Reader for MNIST's IDX files (the standard benchmark on which VaDE reports 94.46% accuracy)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from astrovader.errors import InputError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a NumPy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise InputError(f"{path}: not an IDX file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code not in _DTYPES:
        raise InputError(f"{path}: unknown IDX data type 0x{dtype_code:02x}")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dtype = np.dtype(_DTYPES[dtype_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = data[4 + 4 * ndim:]
    if len(body) != expected:
        raise InputError(f"{path}: header says shape {shape} ({expected} bytes) but the file holds {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def load_mnist(directory: str | Path, kind: str = "t10k") -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, 28, 28) uint8 and labels (N,) from ``{kind}-images-idx3-ubyte[.gz]`` and labels."""
    directory = Path(directory)

    def find(stem: str) -> Path:
        for name in (f"{stem}.gz", stem):
            if (directory / name).is_file():
                return directory / name
        raise FileNotFoundError(f"{directory}: no {stem}[.gz] (MNIST IDX files expected)")

    images = read_idx(find(f"{kind}-images-idx3-ubyte"))
    labels = read_idx(find(f"{kind}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise InputError(f"{directory}: {len(images)} images but {len(labels)} labels")
    return images[:, None].astype(np.uint8), labels.astype(np.int64)
