"""The image store of a dataset (``images.zarr``): what astrovader accepts in its metadata, and where its chunks are.

The metadata is read and validated before zarr opens the store, so a store from elsewhere can never make zarr
import or run a codec astrovader does not know (see ``docs/security.md``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from astrovader.data.limits import MAX_STAMP_SIZE
from astrovader.errors import DatasetError


class ImageStoreError(DatasetError):
    """An image store whose metadata astrovader refuses; the message names the file and the fix."""


# The codecs astrovader writes, and the lossless standard ones another zarr writer may have used. Anything else
# (a pickle- or object-based codec, a filter, a storage transformer) is refused before zarr sees the store, so
# opening a dataset can never run code named by its metadata.
SAFE_CODECS_V3 = {"bytes", "zstd", "blosc", "gzip", "crc32c", "transpose", "sharding_indexed"}
SAFE_COMPRESSORS_V2 = {"zstd", "blosc", "gzip", "zlib", "bz2", "lzma", "lz4"}


def _v3_codec_names(codecs: Any) -> list[str]:
    names = []
    for codec in codecs if isinstance(codecs, list) else [codecs]:
        if not isinstance(codec, dict):
            names.append(repr(codec))
            continue
        names.append(str(codec.get("name")))
        config = codec.get("configuration") or {}
        if isinstance(config, dict):  # sharding nests its own codec lists
            for key in ("codecs", "index_codecs"):
                if key in config:
                    names += _v3_codec_names(config[key])
    return names


def check_image_store(store: Path):
    """Validate an image store's metadata before zarr opens it; return its chunk-key function (row chunk -> path).

    Accepts zarr v3 and v2 arrays of uint8 ``(N, C, S, S)`` (C 1 or 3, S at most the stamp limit) whose codecs
    are all in the allowlists above; refuses anything else with one line naming the file and the problem.
    """
    v3, v2 = store / "zarr.json", store / ".zarray"
    meta_path = v3 if v3.is_file() else v2
    if not meta_path.is_file():
        raise ImageStoreError(f"{store}: no zarr.json (zarr v3) or .zarray (zarr v2) metadata; the image store is "
                           "missing or not a zarr array: restore it or re-create the dataset")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ImageStoreError(f"{meta_path}: unreadable zarr metadata ({exc}); restore it or re-create the "
                           "dataset") from None
    if not isinstance(meta, dict):
        raise ImageStoreError(f"{meta_path}: expected a JSON object, found {type(meta).__name__}")
    if meta_path == v3:
        if meta.get("node_type", "array") != "array":
            raise ImageStoreError(f"{meta_path}: a zarr {meta.get('node_type')}, not an array")
        dtype_ok = meta.get("data_type") == "uint8"
        codecs = _v3_codec_names(meta.get("codecs", []))
        unsafe = [c for c in codecs if c not in SAFE_CODECS_V3]
        if meta.get("storage_transformers"):
            unsafe.append("storage_transformers")
        enc = meta.get("chunk_key_encoding") or {}
        sep = str((enc.get("configuration") or {}).get("separator", "/" if enc.get("name", "default") == "default"
                                                       else "."))
        prefix = "c" + sep if enc.get("name", "default") == "default" else ""
    else:
        dtype_ok = meta.get("dtype") in ("|u1", "u1", "uint8")
        comp = meta.get("compressor")
        unsafe = [] if comp is None else [str(comp.get("id")) if isinstance(comp, dict) else repr(comp)]
        unsafe = [c for c in unsafe if c not in SAFE_COMPRESSORS_V2]
        unsafe += [str(f.get("id")) if isinstance(f, dict) else repr(f) for f in meta.get("filters") or []]
        if meta.get("object_codec") is not None:
            unsafe.append("object_codec")
        sep, prefix = str(meta.get("dimension_separator") or "."), ""
    if unsafe:
        raise ImageStoreError(f"{meta_path}: names codec(s) {', '.join(sorted(set(unsafe)))}, which astrovader does "
                           f"not open (allowed: {', '.join(sorted(SAFE_CODECS_V3 | SAFE_COMPRESSORS_V2))}); "
                           "re-create the dataset with `astrovader ingest`")
    shape = meta.get("shape")
    if not dtype_ok or not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(d, int) for d in shape)):
        raise ImageStoreError(f"{meta_path}: expected a uint8 array of shape (N, C, H, W), found "
                           f"{meta.get('data_type', meta.get('dtype'))} {shape}")
    if shape[1] not in (1, 3) or shape[2] != shape[3] or not 1 <= shape[2] <= MAX_STAMP_SIZE:
        raise ImageStoreError(f"{meta_path}: images of {shape[1]} x {shape[2]} x {shape[3]}; astrovader datasets hold "
                           f"square stamps of 1 or 3 bands and at most {MAX_STAMP_SIZE} px a side")
    if sep not in ("/", "."):
        raise ImageStoreError(f"{meta_path}: chunk key separator {sep!r} is neither '/' nor '.'")
    return lambda index: Path(prefix + sep.join([str(index), "0", "0", "0"]))
