"""The packed dataset format: commit protocol, interrupted writers, append, catalogue parts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from astrovader.data.dataset import CATALOG_PARTS, Dataset, DatasetError, DatasetWriter, write_catalog, write_dataset


def _imgs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 1, 8, 8), dtype=np.uint8)


def test_roundtrip_take_and_chunks(tmp_path):
    x = _imgs(700)
    ds = write_dataset(tmp_path / "d", x, pd.DataFrame({"id": np.arange(700) * 3, "label": np.arange(700) % 4}))
    assert len(ds) == 700 and ds.complete and ds.image_size == 8 and ds.channels == 1
    np.testing.assert_array_equal(ds.load(), x)
    idx = [699, 0, 300, 300, 257]
    np.testing.assert_array_equal(ds.take(idx), x[idx])
    assert sum(len(b) for _, b in ds.iter_chunks(rows=128)) == 700
    assert not (tmp_path / "d" / CATALOG_PARTS).exists()  # consolidated on close


def test_interrupted_writer_keeps_committed_rows_and_resumes(tmp_path):
    x = _imgs(300)
    w = DatasetWriter(tmp_path / "d", 8, 1, commit_every=100)
    for s in range(0, 250, 50):  # 200 committed in two parts, 50 pending
        w.add(x[s:s + 50], [{"id": i} for i in range(s, s + 50)])
    # a "kill" now: the writer is never closed, and its lock goes with the killed process
    w._release()
    ds = Dataset(tmp_path / "d")
    assert len(ds) == 200 and not ds.complete
    np.testing.assert_array_equal(ds.load(), x[:200])
    with DatasetWriter(tmp_path / "d", 8, 1, append=True) as w2:
        assert w2.known_ids == set(range(200))
        w2.add(x[200:], [{"id": i} for i in range(200, 300)])
    ds = Dataset(tmp_path / "d")
    assert ds.complete and ds.ids.tolist() == list(range(300))
    np.testing.assert_array_equal(ds.load(), x)


def test_duplicates_and_geometry_are_refused(tmp_path):
    write_dataset(tmp_path / "d", _imgs(5))
    with pytest.raises(DatasetError, match="already exists"):
        DatasetWriter(tmp_path / "d", 8, 1)
    with pytest.raises(DatasetError, match="cannot append"):
        DatasetWriter(tmp_path / "d", 16, 1, append=True)
    w = DatasetWriter(tmp_path / "d", 8, 1, append=True)
    with pytest.raises(DatasetError, match="duplicate id 3"):
        w.add(_imgs(1), [{"id": 3}])


def test_write_catalog_replaces_parts(tmp_path):
    w = DatasetWriter(tmp_path / "d", 8, 1, commit_every=2)
    w.add(_imgs(4), [{"id": i} for i in range(4)])
    cat = Dataset(tmp_path / "d").catalog
    cat["split"] = ["train", "train", "test", "validation"]
    write_catalog(tmp_path / "d", cat)
    ds = Dataset(tmp_path / "d")
    assert ds.split_indices("train").tolist() == [0, 1] and len(ds) == 4
