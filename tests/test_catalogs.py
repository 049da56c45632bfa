"""Catalogue readers (GZ2, Kaggle, Galaxy10), source ingest, vote cut and splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from astrovader.cli import main as cli_main
from astrovader.data.catalogs import (
    KAGGLE_CLASSES,
    iter_galaxy10,
    read_galaxy10_catalog,
    read_gz2,
    read_gz2_mapping,
    read_kaggle_solutions,
)
from astrovader.data.dataset import Dataset, write_dataset
from astrovader.data.ingest import ingest_folder
from astrovader.data.selection import (
    PAPER_COUNTS,
    apply_split,
    filter_by_votes,
    load_id_lists,
    paper_split_counts,
    random_split,
    split_counts_from_fractions,
    vote_mask,
)

GZ2_IDS = [587737825678131439, 587726016142835881, 587736542560715163]


@pytest.fixture
def gz2_dir(shared_data: Path) -> Path:
    return shared_data / "fixtures" / "gz2"


@pytest.fixture
def kaggle_dir(shared_data: Path) -> Path:
    return shared_data / "fixtures" / "kaggle-gz"


# -- readers ------------------------------------------------------------------------------------
def test_gz2_csv_schema(gz2_dir: Path):
    cat = read_gz2(gz2_dir / "gz2_hart16.csv")
    assert cat["id"].dtype == np.int64 and cat["id"].tolist() == GZ2_IDS
    for col in ("ra", "dec", "smooth_count", "smooth_debiased", "featured_fraction", "artifact_weighted_fraction",
                "edge_on_debiased", "not_edge_on_count", "bar_debiased", "spiral_debiased", "merger_count",
                "dust_lane_flag", "arms_more_than_4_debiased", "total_votes", "first_question_votes", "gz2_class"):
        assert col in cat.columns, col
    assert not any(c.startswith("t0") or c.startswith("t1") for c in cat.columns)
    assert cat["first_question_votes"].tolist() == [37, 44, 34]  # = smooth + featured + artifact counts
    assert cat.loc[0, "ra"] == pytest.approx(126.5726, abs=1e-4)


def test_gz2_fits_matches_csv(gz2_dir: Path, tmp_path: Path):
    from astropy.table import Table

    raw = pd.read_csv(gz2_dir / "gz2_hart16.csv")
    Table.from_pandas(raw).write(tmp_path / "gz2.fits")
    a, b = read_gz2(gz2_dir / "gz2_hart16.csv"), read_gz2(tmp_path / "gz2.fits")
    assert b["id"].tolist() == GZ2_IDS
    pd.testing.assert_frame_equal(a[["id", "smooth_debiased", "spiral_count"]], b[["id", "smooth_debiased",
                                                                                   "spiral_count"]],
                                  check_dtype=False)


def test_gz2_mapping(gz2_dir: Path):
    m = read_gz2_mapping(gz2_dir / "gz2_filename_mapping.csv")
    assert list(m.columns[:2]) == ["id", "asset_id"] and m["id"].dtype == np.int64
    assert dict(zip(m["asset_id"], m["id"], strict=True))[16126] == 587726016142835881


def test_kaggle_schema(kaggle_dir: Path):
    k = read_kaggle_solutions(kaggle_dir / "training_solutions_rev1.csv")
    assert k["id"].tolist() == [100008, 100023, 100053]
    assert len(k.columns) == 1 + 37 == 1 + len(KAGGLE_CLASSES)
    assert k.loc[0, "smooth_cumulative_fraction"] == pytest.approx(0.383147)
    assert k.loc[0, "featured_cumulative_fraction"] == pytest.approx(0.616853)
    assert k.loc[1, "arms_2_cumulative_fraction"] == pytest.approx(0.591327989)  # Class11.2


def _galaxy10(path: Path, n: int = 50, side: int = 69) -> np.ndarray:
    import h5py

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (n, side, side, 3), dtype=np.uint8)
    with h5py.File(path, "w") as fh:
        fh.create_dataset("images", data=imgs, chunks=(8, side, side, 3))
        fh.create_dataset("ans", data=(np.arange(n) % 10).astype(np.uint8))
        fh.create_dataset("ra", data=np.linspace(0, 10, n))
    return imgs


def test_galaxy10_reader_and_ingest(tmp_path: Path):
    imgs = _galaxy10(tmp_path / "g10.h5")
    cat = read_galaxy10_catalog(tmp_path / "g10.h5")
    assert list(cat.columns) == ["id", "galaxy10_class", "ra"] and len(cat) == 50
    blocks = list(iter_galaxy10(tmp_path / "g10.h5", chunk=16))
    assert [s for s, _ in blocks] == [0, 16, 32, 48] and np.array_equal(np.concatenate([b for _, b in blocks]), imgs)
    rc = cli_main(["ingest", "--source", "galaxy10", str(tmp_path / "g10.h5"), str(tmp_path / "ds"), "--size", "32",
                   "--workers", "2", "--quiet"])
    assert rc == 0
    ds = Dataset(tmp_path / "ds")
    assert len(ds) == 50 and ds.catalog["galaxy10_class"].tolist() == (np.arange(50) % 10).tolist()
    # no crop for galaxy10 by default: the image is the band mean resized
    from astrovader.data.stamps import Crop, preprocess

    assert np.array_equal(ds.read(7, 8)[0], preprocess(imgs[7], Crop(fraction=1.0), 32, False))


def test_gz2_source_ingest(gz2_dir: Path, tmp_path: Path):
    rc = cli_main(["ingest", "--source", "gz2", "--catalog", str(gz2_dir / "gz2_hart16.csv"), "--mapping",
                   str(gz2_dir / "gz2_filename_mapping.csv"), str(gz2_dir / "images"), str(tmp_path / "ds"),
                   "--quiet", "--workers", "1"])
    assert rc == 0
    cat = Dataset(tmp_path / "ds").catalog.set_index("id")
    assert sorted(cat.index) == sorted(GZ2_IDS) and cat.loc[587726016142835881, "asset_id"] == 16126
    assert cat.loc[587726016142835881, "smooth_debiased"] == pytest.approx(0.655)
    assert Dataset(tmp_path / "ds").meta["preprocessing"]["crop"] == "192px"


def test_gz2_source_needs_catalog_and_mapping(gz2_dir: Path, tmp_path: Path, capsys):
    assert cli_main(["ingest", "--source", "gz2", str(gz2_dir / "images"), str(tmp_path / "ds")]) == 2
    assert "--catalog" in capsys.readouterr().err


def test_kaggle_source_ingest(kaggle_dir: Path, tmp_path: Path):
    rep = ingest_folder(kaggle_dir, tmp_path / "ds", source="kaggle", crop_px=192, workers=1, progress=False)
    assert rep.n_written == 3  # training images only; the test images have no labels
    cat = Dataset(tmp_path / "ds").catalog
    assert cat["id"].tolist() == [100008, 100023, 100053] and "spiral_cumulative_fraction" in cat.columns


# -- selection ----------------------------------------------------------------------------------
def _votes_catalog(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": 587000000000000000 + rng.permutation(n * 3)[:n].astype(np.int64),
                         "smooth_count": rng.integers(0, 30, n), "featured_count": rng.integers(0, 30, n),
                         "artifact_count": rng.integers(0, 5, n)})


def test_vote_filter_strictly_more_than_threshold():
    cat = pd.DataFrame({"id": [1, 2, 3, 4], "smooth_count": [20, 20, 30, 0], "featured_count": [16, 17, 10, 0],
                        "artifact_count": [0, 0, 0, 0]})
    assert filter_by_votes(cat)["id"].tolist() == [2, 3]  # 36 votes is not "more than 36"
    assert filter_by_votes(cat, min_votes=10)["id"].tolist() == [1, 2, 3]
    cat["first_question_votes"] = [100, 0, 0, 0]
    assert vote_mask(cat).tolist() == [True, False, False, False]


def test_paper_counts_on_205700_rows():
    cat = _votes_catalog(205_700)
    counts = paper_split_counts(len(cat))
    assert counts == PAPER_COUNTS
    split = random_split(cat["id"].to_numpy(), counts, seed=3)
    vals, n = np.unique(split, return_counts=True)
    assert dict(zip(vals, n, strict=True)) == {"test": 41_100, "train": 159_600, "validation": 5_000}
    assert counts["train"] % 100 == 0
    # reproducible, and independent of row order
    shuffled = cat.sample(frac=1, random_state=1)
    again = pd.Series(random_split(shuffled["id"].to_numpy(), counts, seed=3), index=shuffled["id"])
    assert (again.loc[cat["id"]].to_numpy() == split).all()
    assert not (random_split(cat["id"].to_numpy(), counts, seed=4) == split).all()
    with pytest.raises(ValueError, match="at least"):
        paper_split_counts(100_000)


def test_fraction_counts():
    c = split_counts_from_fractions(10_123, (0.8, 0.05, 0.15), batch_size=100)
    assert c == {"train": 8_000, "validation": 506, "test": 1_617}
    assert sum(c.values()) == 10_123
    with pytest.raises(ValueError, match="sum"):
        split_counts_from_fractions(100, (0.8, 0.3, 0.1))


def _dataset(tmp_path: Path, cat: pd.DataFrame) -> Path:
    write_dataset(tmp_path / "ds", np.zeros((len(cat), 1, 4, 4), np.uint8), cat)
    return tmp_path / "ds"


def test_split_cli_fractions_and_votes(tmp_path: Path, capsys):
    cat = _votes_catalog(1_000)
    path = _dataset(tmp_path, cat)
    rc = cli_main(["split", str(path), "--fractions", "0.8,0.05,0.15", "--min-votes", "36", "--seed", "1"])
    assert rc == 0
    ds = Dataset(path)
    keep = vote_mask(cat)
    assert (ds.catalog["split"].to_numpy()[~keep] == "excluded").all()
    n = int(keep.sum())
    assert len(ds.split_indices("train")) == int(n * 0.8) // 100 * 100
    assert len(ds) == 1_000  # nothing dropped
    assert "train" in capsys.readouterr().out
    first = ds.catalog["split"].copy()
    cli_main(["split", str(path), "--fractions", "0.8,0.05,0.15", "--min-votes", "36", "--seed", "1"])
    assert (Dataset(path).catalog["split"] == first).all()


def test_split_cli_bad_arguments(tmp_path: Path, capsys):
    path = _dataset(tmp_path, _votes_catalog(10))
    assert cli_main(["split", str(path)]) == 2
    assert "--fractions" in capsys.readouterr().err
    assert cli_main(["split", str(path), "--fractions", "0.8,0.2"]) == 2
    assert "three values" in capsys.readouterr().err


def test_split_from_paper_id_lists(shared_data: Path, tmp_path: Path):
    lists = load_id_lists(shared_data / "astrovader-splits")
    assert {k: len(v) for k, v in lists.items()} == {"train": 159_666, "validation": 5_000, "test": 41_167}
    assert lists["train"].dtype == np.int64 and lists["train"].dtype.byteorder in ("=", "<")
    ids = np.concatenate([lists["train"][:30], lists["validation"][:5], lists["test"][:10], [1, 2]])
    path = _dataset(tmp_path, pd.DataFrame({"id": ids}))
    counts = apply_split(path, id_lists=shared_data / "astrovader-splits")
    assert counts == {"train": 30, "validation": 5, "test": 10, "unassigned": 2}
    cat = Dataset(path).catalog
    assert cat.loc[cat["id"] == lists["validation"][0], "split"].item() == "validation"


def test_api_and_cli_use_the_same_per_source_defaults(kaggle_dir: Path, tmp_path: Path):
    """`ingest_folder(source="kaggle")` crops exactly as `astrovader ingest --source kaggle` does."""
    ingest_folder(kaggle_dir, tmp_path / "api", source="kaggle", size=32, workers=1, progress=False)
    assert cli_main(["ingest", "--source", "kaggle", str(kaggle_dir), str(tmp_path / "cli"), "--size", "32",
                     "--workers", "1", "--quiet"]) == 0
    api, cli = Dataset(tmp_path / "api"), Dataset(tmp_path / "cli")
    assert api.meta["preprocessing"]["crop"] == cli.meta["preprocessing"]["crop"] == "192px"
    np.testing.assert_array_equal(api.load(), cli.load())


def test_ingest_preset_applies_the_presets_stamp_recipe(kaggle_dir: Path, tmp_path: Path):
    assert cli_main(["ingest", "--source", "kaggle", str(kaggle_dir), str(tmp_path / "ds"), "--preset", "sdss64-k12",
                     "--workers", "1", "--quiet"]) == 0
    pre = Dataset(tmp_path / "ds").meta["preprocessing"]
    assert (pre["crop"], pre["size"]) == ("3xR90+derotate+flux20", 64)
    # gz2-64: the paper's Petrosian-scaled frames, centre 192 of 424 px, which on these 424 px images is the
    # kaggle source's own 192 px crop
    assert cli_main(["ingest", "--source", "kaggle", str(kaggle_dir), str(tmp_path / "gz2"), "--preset", "gz2-64",
                     "--workers", "1", "--quiet"]) == 0
    assert cli_main(["ingest", "--source", "kaggle", str(kaggle_dir), str(tmp_path / "px"), "--crop-px", "192",
                     "--size", "64", "--workers", "1", "--quiet"]) == 0
    assert Dataset(tmp_path / "gz2").meta["preprocessing"]["size"] == 64
    np.testing.assert_array_equal(Dataset(tmp_path / "gz2").load(), Dataset(tmp_path / "px").load())
    assert cli_main(["ingest", str(kaggle_dir), str(tmp_path / "x"), "--preset", "demo", "--quiet"]) == 2
