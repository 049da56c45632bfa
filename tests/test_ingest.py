"""Folder ingest: preprocessing, labels, failure accounting, append and resume, CLI."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from astrovader.cli import main as cli_main
from astrovader.data.dataset import Dataset
from astrovader.data.decode import ImageReadError, decode_image
from astrovader.data.ingest import REPORT_NAME, ingest_folder
from astrovader.data.stamps import Crop, parse_crop, preprocess


def _gz1_subset(shared_data: Path, dest: Path, n: int) -> tuple[Path, pd.DataFrame]:
    labels = pd.read_csv(shared_data / "gz1-sdss" / "labels.csv", dtype={"objid": str})
    sub = labels.iloc[:: max(1, len(labels) // n)].head(n).reset_index(drop=True)
    (dest / "images").mkdir(parents=True)
    for f in sub["file"]:
        shutil.copy(shared_data / "gz1-sdss" / f, dest / f)
    sub.to_csv(dest / "labels.csv", index=False)
    return dest, sub


def _report_rows(out: Path) -> list[dict[str, str]]:
    with open(out / REPORT_NAME, newline="") as fh:
        return list(csv.DictReader(fh))


# -- preprocessing ------------------------------------------------------------------------------
def test_parse_crop_forms():
    assert parse_crop("192/256").fraction == pytest.approx(0.75)
    assert parse_crop("0.75").fraction == pytest.approx(0.75)
    assert parse_crop(None, pixels=192).pixels == 192
    for bad in ("abc", "0", "1.5", "3/2"):
        with pytest.raises(ValueError, match="--crop"):
            parse_crop(bad)


def test_preprocess_matches_paper_crop_on_256px():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    img[32:224, 32:224] = 200  # the paper's central 192 px (pixels 32..223)
    out = preprocess(img, parse_crop("192/256"), 128, colour=False)
    assert out.shape == (1, 128, 128) and out.dtype == np.uint8
    assert np.all(out == 200)  # nothing from outside the central 192 px leaks in
    col = preprocess(img, Crop(fraction=0.75), 64, colour=True)
    assert col.shape == (3, 64, 64)
    with pytest.raises(ImageReadError, match="smaller than"):
        preprocess(img, parse_crop(None, pixels=300), 128, colour=False)


def test_sixteen_bit_png_scaled_not_failed(tmp_path: Path):
    arr = np.full((64, 64), 65535, np.uint16)
    arr[:, :32] = 0
    Image.fromarray(arr).save(tmp_path / "a.png")
    dec = decode_image(tmp_path / "a.png")
    assert dec.max() == pytest.approx(255) and dec.min() == 0
    out = preprocess(dec, Crop(fraction=1.0), 64, colour=False)
    assert out[0, :, :30].max() == 0 and out[0, :, 34:].min() == 255


def test_fits_stretch_and_orientation(tmp_path: Path):
    from astropy.io import fits

    data = np.zeros((40, 40), np.float32)
    data[:20] = 100.0  # FITS rows 0..19 are the *bottom* half
    data[0, 0] = np.nan
    fits.PrimaryHDU(data).writeto(tmp_path / "g.fits")
    dec = decode_image(tmp_path / "g.fits")
    assert dec.shape == (40, 40, 1)
    assert dec[30:, 1:, 0].min() > 250 and dec[:10, :, 0].max() < 5  # flipped: bright half at the bottom
    assert dec[39, 0, 0] == 0  # NaN pixel (FITS row 0) becomes black


# -- real data ----------------------------------------------------------------------------------
def test_gz1_subset_keeps_labels_and_int64_objids(shared_data: Path, tmp_path: Path):
    src, sub = _gz1_subset(shared_data, tmp_path / "src", 300)
    rep = ingest_folder(src, tmp_path / "ds", labels=src / "labels.csv", id_column="objid", workers=2,
                        progress=False)
    assert (rep.n_inputs, rep.n_written, rep.n_failed, rep.n_skipped_duplicate) == (300, 300, 0, 0)
    ds = Dataset(tmp_path / "ds")
    assert ds.complete and len(ds) == 300 and ds.images.shape[1:] == (1, 128, 128)
    assert ds.catalog["id"].dtype == np.int64
    want = dict(zip([int(x) for x in sub["objid"]], sub["gz1_class"], strict=True))
    got = dict(zip(ds.catalog["id"].tolist(), ds.catalog["gz1_class"].tolist(), strict=True))
    assert got == want  # exact int64 objids (e.g. 587722953303916935) and their labels
    assert set(ds.catalog.columns) >= {"id", "file", "gz1_class", "gz1_label", "objid"} - {"objid"}
    assert ds.catalog["file"].str.startswith("images/").all()
    # the galaxy is centred: the middle of the image is brighter than the border on average
    imgs = ds.load()[:, 0].astype(float)
    assert imgs[:, 48:80, 48:80].mean() > 2 * imgs[:, :8, :].mean()


def test_gz2_kaggle_keeps_labels(shared_data: Path, tmp_path: Path):
    src = shared_data / "gz2-kaggle"
    rep = ingest_folder(src, tmp_path / "ds", labels=src / "labels.csv", id_column="GalaxyID", workers=2,
                        progress=False)
    labels = pd.read_csv(src / "labels.csv")
    assert rep.n_written == len(labels) == 1400 and rep.n_failed == 0
    cat = Dataset(tmp_path / "ds").catalog
    assert dict(zip(cat["id"], cat["spiral"], strict=True)) == dict(zip(labels["GalaxyID"], labels["spiral"],
                                                                         strict=True))


# -- failures -----------------------------------------------------------------------------------
def _corrupt_copy(shared_data: Path, dest: Path) -> tuple[Path, dict[str, str]]:
    """~200 gz1 files, 10 of them (5%) broken in different ways; returns {relative file: reason word}."""
    from astropy.io import fits

    src, sub = _gz1_subset(shared_data, dest, 200)
    files = list(sub["file"])
    bad: dict[str, str] = {}
    data = (src / files[0]).read_bytes()
    (src / files[0]).write_bytes(data[: len(data) // 3])
    bad[files[0]] = "truncated"
    for f in files[1:3]:
        (src / f).write_bytes(b"")
        bad[f] = "zero bytes"
    (src / files[3]).write_text("<html>404 not found</html>\n")
    bad[files[3]] = "not an image"
    (src / files[4]).unlink()  # replaced by a 2-band PNG under the same id
    la = files[4].replace(".jpeg", ".png")
    Image.fromarray(np.zeros((64, 64, 2), np.uint8), mode="LA").save(src / la)
    bad[la] = "wrong number of bands"
    (src / files[5]).unlink()
    cube = files[5].replace(".jpeg", ".fits")
    fits.PrimaryHDU(np.ones((2, 2, 32, 32), np.float32)).writeto(src / cube)
    bad[cube] = "wrong number of bands"
    (src / files[6]).unlink()
    tab = files[6].replace(".jpeg", ".fits")
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])]
                 ).writeto(src / tab)
    bad[tab] = "no image HDU"
    (src / files[7]).unlink()
    nan = files[7].replace(".jpeg", ".fits")
    fits.PrimaryHDU(np.full((32, 32), np.nan, np.float32)).writeto(src / nan)
    bad[nan] = "all-NaN"
    data = (src / files[8]).read_bytes()
    (src / files[8]).write_bytes(data[:600])
    bad[files[8]] = "truncated"
    (src / files[9]).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    bad[files[9]] = "not an image"  # PNG signature, garbage after it
    # a 16-bit PNG among them must be *ingested*, not failed
    (src / files[10]).unlink()
    Image.fromarray((np.arange(423 * 423, dtype=np.uint32).reshape(423, 423) % 65536).astype(np.uint16)).save(
        src / files[10].replace(".jpeg", ".png"))
    return src, bad


def test_corrupted_files_reported_with_reasons(shared_data: Path, tmp_path: Path):
    src, bad = _corrupt_copy(shared_data, tmp_path / "src")
    out = tmp_path / "ds"
    rep = ingest_folder(src, out, labels=src / "labels.csv", id_column="objid", workers=2, progress=False)
    assert rep.n_inputs == 200
    assert rep.n_failed == len(bad) == 10
    assert rep.n_written == 190 and rep.balanced
    rows = {r["file"]: r for r in _report_rows(out) if r["status"] == "failed"}
    assert set(rows) == set(bad)
    for f, word in bad.items():
        assert word.lower() in rows[f]["reason"].lower(), (f, rows[f]["reason"])
    # label rows whose file was renamed (.jpeg -> .png/.fits) are reported as missing images, not dropped
    missing = [r for r in _report_rows(out) if r["status"] == "missing_image"]
    assert len(missing) == 5
    assert len(Dataset(out)) == 190


def test_cli_failure_summary(shared_data: Path, tmp_path: Path, capsys):
    src, bad = _corrupt_copy(shared_data, tmp_path / "src")
    rc = cli_main(["ingest", str(src), str(tmp_path / "ds"), "--workers", "1", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "inputs 200 = written 190 + skipped as duplicate 0 + skipped without labels 0 + failed 10" in out
    assert "zero bytes" in out


# -- append, resume, duplicates -----------------------------------------------------------------
def _synthetic_folder(root: Path, ids: list[int], sub: str = "") -> Path:
    d = root / sub if sub else root
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(ids[0] if ids else 0)
    for i in ids:
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_append_counts_duplicates(tmp_path: Path):
    a = _synthetic_folder(tmp_path / "a", list(range(10)))
    b = _synthetic_folder(tmp_path / "b", list(range(5, 15)))
    out = tmp_path / "ds"
    r1 = ingest_folder(a, out, size=16, workers=1, progress=False)
    assert r1.n_written == 10
    with pytest.raises(FileExistsError, match="--append"):
        ingest_folder(b, out, size=16, workers=1, progress=False)
    with pytest.raises(ValueError, match="crop"):
        ingest_folder(b, out, size=16, crop=0.5, workers=1, append=True, progress=False)
    r2 = ingest_folder(b, out, size=16, workers=1, append=True, progress=False)
    assert (r2.n_inputs, r2.n_written, r2.n_skipped_duplicate, r2.n_total) == (10, 5, 5, 15)
    ds = Dataset(out)
    assert ds.complete and sorted(ds.ids.tolist()) == list(range(15))
    assert {r["status"] for r in _report_rows(out)} == {"duplicate"}


def test_duplicate_ids_within_input(tmp_path: Path):
    src = _synthetic_folder(tmp_path / "src", [1, 2, 3], "x")
    _synthetic_folder(src, [3], "y")
    rep = ingest_folder(src, tmp_path / "ds", size=16, workers=1, progress=False)
    assert (rep.n_written, rep.n_skipped_duplicate) == (3, 1)
    (dup,) = [i for i in rep.issues if i.status == "duplicate"]
    assert dup.file == "y/3.png" and "x/3.png" in dup.reason


def test_unlabelled_images_kept_or_skipped(tmp_path: Path):
    src = _synthetic_folder(tmp_path / "src", [1, 2, 3, 4])
    pd.DataFrame({"id": [1, 2, 99], "klass": ["a", "b", "c"]}).to_csv(tmp_path / "l.csv", index=False)
    rep = ingest_folder(src, tmp_path / "ds", labels=tmp_path / "l.csv", size=16, workers=1, progress=False)
    cat = Dataset(tmp_path / "ds").catalog.set_index("id")
    assert rep.n_written == 4 and cat.loc[1, "klass"] == "a" and pd.isna(cat.loc[4, "klass"])
    assert [i.id for i in rep.missing_images] == [99]
    rep2 = ingest_folder(src, tmp_path / "ds2", labels=tmp_path / "l.csv", size=16, workers=1, progress=False,
                         labels_only=True)
    assert (rep2.n_written, rep2.n_skipped_unlabelled) == (2, 2) and rep2.balanced


def test_resume_after_kill(tmp_path: Path, monkeypatch):
    import astrovader.data.ingest as ing

    src = _synthetic_folder(tmp_path / "src", list(range(100)))
    out = tmp_path / "ds"
    real = ing.preprocess
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] > 70:
            raise KeyboardInterrupt  # like Ctrl-C / SIGINT part-way through
        return real(*a, **k)

    monkeypatch.setattr(ing, "preprocess", dying)
    with pytest.raises(KeyboardInterrupt):
        ingest_folder(src, out, size=16, workers=1, progress=False, commit_every=32)
    partial = Dataset(out)
    assert not partial.complete and 32 <= len(partial) <= 70
    monkeypatch.setattr(ing, "preprocess", real)
    rep = ingest_folder(src, out, size=16, workers=1, progress=False)  # same command, no --append
    assert rep.n_skipped_duplicate == len(partial) and rep.n_written == 100 - len(partial)
    ds = Dataset(out)
    assert ds.complete and sorted(ds.ids.tolist()) == list(range(100))


def test_cli_bad_arguments(tmp_path: Path, capsys):
    assert cli_main(["ingest", str(tmp_path), str(tmp_path / "o"), "--crop", "abc"]) == 2
    assert "--crop" in capsys.readouterr().err
    assert cli_main(["ingest", str(tmp_path / "nope"), str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["ingest", str(tmp_path), str(tmp_path / "o"), "--source", "bogus"])
    assert "folder" in capsys.readouterr().err  # names the allowed values


def test_integer_and_boolean_labels_survive_unlabelled_rows(tmp_path: Path):
    """An image without a label row must not turn the integer class column into floats (3 -> 3.0), in the
    part that holds it nor when parts with and without the column are stacked."""
    src = _synthetic_folder(tmp_path / "src", [1, 2, 3, 4, 5])
    pd.DataFrame({"id": [1, 2, 3], "klass": [0, 3, 2], "edge_on": [True, False, True],
                  "p_el": [1.0, 0.5, 0.25]}).to_csv(tmp_path / "l.csv", index=False)
    # commit_every=2 writes parts {1, 2}, {3, 4}, {5}: the last has no label columns at all
    ingest_folder(src, tmp_path / "ds", labels=tmp_path / "l.csv", size=16, workers=1, progress=False,
                  commit_every=2)
    cat = Dataset(tmp_path / "ds").catalog.set_index("id").sort_index()
    assert str(cat["klass"].dtype) == "Int64" and cat["klass"].tolist()[:3] == [0, 3, 2]
    assert str(cat["edge_on"].dtype) == "boolean" and cat["edge_on"].tolist()[:3] == [True, False, True]
    assert cat["p_el"].dtype == np.float64 and cat["p_el"].tolist()[:3] == [1.0, 0.5, 0.25]
    assert cat.loc[[4, 5], ["klass", "edge_on"]].isna().all().all() and cat.loc[[4, 5], "p_el"].isna().all()
