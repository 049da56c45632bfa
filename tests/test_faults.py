"""Never a silent wrong result: a table of damaged inputs, unfinished runs, stale outputs and bad arguments.

Each case damages a fresh copy of a small dataset and trained run, runs one command, and expects a one-line error
naming the culprit with exit code 2 (never a traceback), or a correct result. ``astrovader check`` must find each
damaged dataset or run (exit 1) and pass the healthy ones (exit 0). Nothing the user had may be lost.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from PIL import Image

from astrovader.cli import main
from astrovader.data.dataset import Dataset, write_dataset

from .conftest import blob_images
from .test_predict import TINY


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A 16 px dataset of 300 images (chunks of 256 rows: two chunks) and a finished tiny run trained on it."""
    tmp = tmp_path_factory.mktemp("faults")
    imgs, labels = blob_images(300, size=16, seed=2)
    write_dataset(tmp / "ds", imgs, pd.DataFrame({"id": np.arange(300), "true_class": labels}))
    sets = [a for o in TINY for a in ("--set", o)]
    assert main(["train", str(tmp / "ds"), str(tmp / "run"), "--preset", "demo", *sets, "--quiet"]) == 0
    assert main(["train", str(tmp / "ds"), str(tmp / "gamma-only"), "--preset", "demo", *sets, "--quiet",
                 "--stop-after", "0"]) == 0  # killed during gamma-training: the mixture was never initialised
    return tmp


@pytest.fixture
def work(pristine, tmp_path) -> Path:
    """A fresh copy to damage."""
    for name in ("ds", "run", "gamma-only"):
        shutil.copytree(pristine / name, tmp_path / name)
    return tmp_path


def _chunk(ds: Path, i: int) -> Path:
    return ds / "images.zarr" / "c" / str(i) / "0" / "0" / "0"


def _overwrite_tail(path: Path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    data[-n:] = b"\xff" * n  # float32 0xffffffff is NaN
    path.write_bytes(bytes(data))


@dataclass
class Case:
    name: str
    damage: Callable[[Path], None]
    argv: Callable[[Path], list[str]]
    needle: str  # must appear in the error message
    check: str | None = None  # the path `astrovader check` must find damaged ("ds" or "run")


def _none(w: Path) -> None:
    pass


def _dup_ids(w: Path) -> None:
    cat = pd.read_parquet(w / "ds" / "catalog.parquet")
    cat.loc[5, "id"] = cat.loc[4, "id"]
    cat.to_parquet(w / "ds" / "catalog.parquet", index=False)


def _null_id(w: Path) -> None:
    cat = pd.read_parquet(w / "ds" / "catalog.parquet")
    cat["id"] = cat["id"].astype("Int64")
    cat.loc[7, "id"] = None
    cat.to_parquet(w / "ds" / "catalog.parquet", index=False)


def _truncate_chunk(w: Path) -> None:
    c = _chunk(w / "ds", 1)
    c.write_bytes(c.read_bytes()[:20])


def _dataset_json(w: Path) -> None:
    p = w / "ds" / "dataset.json"
    p.write_text(p.read_text()[:-10])


def _size32(w: Path) -> None:
    imgs, _ = blob_images(20, size=32)
    write_dataset(w / "big", imgs)


def _other_dask_job(w: Path) -> None:
    assert main(["predict", str(w / "run"), str(w / "ds"), str(w / "parts"), "--dask", "local:1",
                 "--chunk-rows", "100", "--quiet"]) == 0


def _existing(w: Path) -> None:
    (w / "p.parquet").write_bytes(b"the user's own file")


def _generated8(w: Path) -> None:
    assert main(["generate", str(w / "run"), str(w / "gen"), "--n", "8", "--quiet", "--no-consistency"]) == 0


def _model_no_checkpoint(w: Path) -> None:
    (w / "run" / "checkpoint.safetensors").unlink()


def _bad_configs(w: Path) -> None:
    (w / "cfgdir").mkdir()
    (w / "latin1.toml").write_bytes("[train]\nseed = 1 # caf\xe9\n".encode("latin-1"))


def _edit_catalogue(w: Path, how: str) -> None:
    """A catalogue edited in pandas and saved back, with dataset.json's n 'fixed' to match, as a user would."""
    cat = pd.read_parquet(w / "ds" / "catalog.parquet")
    cat = cat.iloc[30:] if how == "truncate" else cat.assign(id=cat["id"] + 1000)
    cat.to_parquet(w / "ds" / "catalog.parquet", index=False)
    meta = json.loads((w / "ds" / "dataset.json").read_text())
    meta["n"] = len(cat)
    (w / "ds" / "dataset.json").write_text(json.dumps(meta))


def _config_edited(w: Path) -> None:
    cfg = w / "run" / "config.toml"
    cfg.write_text(cfg.read_text().replace("latent_dim = 4", "latent_dim = 8"))


def _users_files(w: Path) -> None:
    for folder, name in (("rep", "predictions.parquet"), ("fig", "gallery.png"), (".", "k.png")):
        (w / folder).mkdir(exist_ok=True)
        (w / folder / name).write_bytes(b"the user's own file")


def _split(w: Path) -> None:
    assert main(["split", str(w / "ds"), "--fractions", "0.8,0.1,0.1", "--batch-size", "10"]) == 0


def _job_list(w: Path) -> None:
    (w / "parts").mkdir()
    (w / "parts" / "_job.json").write_text("[1, 2, 3]")


def _pickle_codec(w: Path) -> None:
    meta_path = w / "ds" / "images.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["codecs"] = [{"name": "bytes"}, {"name": "numcodecs.pickle", "configuration": {"protocol": 4}}]
    meta_path.write_text(json.dumps(meta))


def _cp1252_labels(w: Path) -> None:
    (w / "imgs").mkdir()
    Image.new("L", (32, 32), 90).save(w / "imgs" / "a.png")
    (w / "labels.csv").write_bytes("file,kind\na.png,caf\xe9\n".encode("cp1252"))


PRED = ["predict", "{run}", "{ds}", "{out}/p.parquet", "--quiet"]
TRAIN_SETS = [a for o in TINY for a in ("--set", o)]

CASES = [
    Case("catalogue deleted", lambda w: (w / "ds" / "catalog.parquet").unlink(),
         lambda w: ["predict", str(w / "run"), str(w / "ds"), str(w / "p.parquet")], "catalog.parquet", "ds"),
    Case("image chunk deleted", lambda w: _chunk(w / "ds", 1).unlink(),
         lambda w: ["predict", str(w / "run"), str(w / "ds"), str(w / "p.parquet")], "chunk 1", "ds"),
    Case("image chunk truncated", _truncate_chunk,
         lambda w: ["predict", str(w / "run"), str(w / "ds"), str(w / "p.parquet")], "cannot decode", "ds"),
    Case("duplicate ids", _dup_ids,
         lambda w: ["predict", str(w / "run"), str(w / "ds"), str(w / "p.parquet")], "more than once", "ds"),
    Case("missing id", _null_id,
         lambda w: ["report", str(w / "run"), str(w / "ds"), str(w / "rep")], "have no id", "ds"),
    Case("dataset.json syntax error", _dataset_json,
         lambda w: ["train", str(w / "ds"), str(w / "new"), "--preset", "demo", *TRAIN_SETS], "dataset.json", "ds"),
    Case("run killed in gamma-training", _none,
         lambda w: ["predict", str(w / "gamma-only"), str(w / "ds"), str(w / "p.parquet")], "never initialised"),
    Case("dask predict with an unfinished run", _none,
         lambda w: ["predict", str(w / "gamma-only"), str(w / "ds"), str(w / "parts"), "--dask", "local:1"],
         "never initialised"),
    Case("resume with a changed schedule", _none,
         lambda w: ["train", str(w / "ds"), str(w / "gamma-only"), "--resume", "--preset", "demo", *TRAIN_SETS,
                    "--set", "train.periods=3"], "train.periods"),
    Case("NaN bytes in the weights", lambda w: _overwrite_tail(w / "run" / "model.safetensors"),
         lambda w: ["predict", str(w / "run"), str(w / "ds"), str(w / "p.parquet")], "NaN", "run"),
    Case("truncated weights", lambda w: (w / "run" / "model.safetensors").write_bytes(b"\x10\x00"),
         lambda w: ["predict", str(w / "run"), str(w / "ds"), str(w / "p.parquet")], "model.safetensors", "run"),
    Case("train into a run with no checkpoint", _model_no_checkpoint,
         lambda w: ["train", str(w / "ds"), str(w / "run"), "--preset", "demo", *TRAIN_SETS], "already holds"),
    Case("train into the dataset", _none,
         lambda w: ["train", str(w / "ds"), str(w / "ds"), "--preset", "demo", *TRAIN_SETS], "dataset directory"),
    Case("model and dataset sizes differ", _size32,
         lambda w: ["predict", str(w / "run"), str(w / "big"), str(w / "p.parquet")], "the model expects"),
    Case("explore with sizes that differ", _size32,
         lambda w: ["explore", str(w / "run"), str(w / "big"), str(w / "fig")], "the model expects"),
    Case("dask parts of another job", _other_dask_job,
         lambda w: ["predict", str(w / "run"), str(w / "ds"), str(w / "parts"), "--dask", "local:1",
                    "--chunk-rows", "64"], "another job"),
    Case("predict over an existing file", _existing,
         lambda w: ["predict", str(w / "run"), str(w / "ds"), str(w / "p.parquet")], "already exists"),
    Case("predict to a .csv name", _none,
         lambda w: ["predict", str(w / "run"), str(w / "ds"), str(w / "p.csv")], ".parquet, .fits"),
    Case("predict into a directory", lambda w: (w / "outdir.parquet").mkdir(),
         lambda w: ["predict", str(w / "run"), str(w / "ds"), str(w / "outdir.parquet")], "is a directory"),
    Case("generate fewer into a larger output", _generated8,
         lambda w: ["generate", str(w / "run"), str(w / "gen"), "--n", "3"], "more than the 3"),
    Case("negative batch size", _none,
         lambda w: ["predict", str(w / "run"), str(w / "ds"), str(w / "p.parquet"), "--batch-size", "-3"],
         "--batch-size"),
    Case("zero batch size", _none,
         lambda w: ["predict", str(w / "run"), str(w / "ds"), str(w / "p.parquet"), "--batch-size", "0"],
         "--batch-size"),
    Case("infinite learning rate", _none,
         lambda w: ["train", str(w / "ds"), str(w / "new"), "--preset", "demo", *TRAIN_SETS, "--set", "train.lr=inf"],
         "train.lr"),
    Case("config is a directory", _bad_configs,
         lambda w: ["train", str(w / "ds"), str(w / "new"), "--config", str(w / "cfgdir")], "is a directory"),
    Case("config is not UTF-8", _bad_configs,
         lambda w: ["train", str(w / "ds"), str(w / "new"), "--config", str(w / "latin1.toml")], "latin1.toml"),
    Case("simulate an odd size", _none,
         lambda w: ["simulate", str(w / "sim"), "--n", "10", "--size", "33"], "multiple of 8"),
    Case("demo with no galaxies", _none, lambda w: ["demo", str(w / "demo"), "--n", "0"], "at least"),
    # data that cannot be silently mismatched
    Case("catalogue truncated, n fixed", lambda w: _edit_catalogue(w, "truncate"),
         lambda w: ["predict", str(w / "run"), str(w / "ds"), str(w / "p.parquet")], "does not match the stored", "ds"),
    Case("catalogue ids edited", lambda w: _edit_catalogue(w, "ids"),
         lambda w: ["report", str(w / "run"), str(w / "ds"), str(w / "rep")], "does not match the stored", "ds"),
    Case("split rewritten", _split,
         lambda w: ["split", str(w / "ds"), "--fractions", "0.5,0.1,0.4", "--batch-size", "10"], "--overwrite"),
    Case("weights do not fit config.toml", _config_edited,
         lambda w: ["predict", str(w / "run"), str(w / "ds"), str(w / "p.parquet")], "config.toml", "run"),
    Case("device gpu", _none,
         lambda w: ["predict", str(w / "run"), str(w / "ds"), str(w / "p.parquet"), "--device", "gpu"], "'gpu'"),
    Case("device cuda:7", _none,
         lambda w: ["train", str(w / "ds"), str(w / "new"), "--preset", "demo", *TRAIN_SETS, "--device", "cuda:7"],
         "'cuda:7'"),
    Case("report into a folder of the user's", _users_files,
         lambda w: ["report", str(w / "run"), str(w / "ds"), str(w / "rep")], "--overwrite"),
    Case("explore over the user's figures", _users_files,
         lambda w: ["explore", str(w / "run"), str(w / "ds"), str(w / "fig")], "gallery.png"),
    Case("choose-k over the user's figure", _users_files,
         lambda w: ["choose-k", str(w / "run"), str(w / "ds"), "--out", str(w / "k.png")], "k.png"),
    Case("dask job file not an object", _job_list,
         lambda w: ["predict", str(w / "run"), str(w / "ds"), str(w / "parts"), "--dask", "local:1"], "JSON list"),
    Case("image store names a pickle codec", _pickle_codec,
         lambda w: ["predict", str(w / "run"), str(w / "ds"), str(w / "p.parquet")], "numcodecs.pickle", "ds"),
    Case("labels CSV not UTF-8", _cp1252_labels,
         lambda w: ["ingest", str(w / "imgs"), str(w / "out"), "--labels", str(w / "labels.csv"), "--workers", "1"],
         "not UTF-8"),
    Case("generate to an unwritable suffix", _none,
         lambda w: ["generate", str(w / "run"), str(w / "g.fits.gz"), "--n", "2"], "--format"),
]


def _run(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of one command (stdout stays readable through ``capsys.readouterr().out``)."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    _run.out = captured.out  # type: ignore[attr-defined]
    return code, captured.err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault_is_named_not_used(case: Case, work: Path, capsys):
    case.damage(work)
    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()}
    code, err = _run(case.argv(work), capsys)
    assert code == 2, err
    assert "Traceback" not in err
    assert case.needle in err, err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    for p, mtime in before.items():  # no input or earlier output was touched
        assert p.exists() and p.stat().st_mtime_ns == mtime, p
    if case.check:
        assert _run(["check", str(work / case.check), "--quiet"], capsys)[0] == 1
    assert not (work / "demo").exists()


def test_check_passes_healthy_dataset_and_run(pristine, capsys):
    code, _ = _run(["check", str(pristine / "ds"), str(pristine / "run"), "--quiet"], capsys)
    out = _run.out  # type: ignore[attr-defined]
    assert code == 0
    assert "dataset, healthy" in out and "run, healthy" in out and "2 of 2 image chunks" in out


def test_check_finds_an_unfinished_run(pristine, capsys):
    assert _run(["check", str(pristine / "gamma-only"), "--quiet"], capsys)[0] == 1


def test_unfinished_run_predicts_only_when_allowed_and_says_so(work: Path, capsys):
    out = work / "p.parquet"
    assert main(["predict", str(work / "gamma-only"), str(work / "ds"), str(out), "--allow-unfinished",
                 "--quiet"]) == 0
    meta = pq.read_schema(out).metadata
    assert b"never initialised" in meta[b"RUNSTATE"]


def test_overwrite_replaces_an_existing_catalogue(work: Path):
    _existing(work)
    assert main(["predict", str(work / "run"), str(work / "ds"), str(work / "p.parquet"), "--overwrite",
                 "--quiet"]) == 0
    assert len(pd.read_parquet(work / "p.parquet")) == 300


def test_debug_shows_the_traceback(work: Path):
    with pytest.raises(FileExistsError):
        main(["--debug", "train", str(work / "ds"), str(work / "run"), "--preset", "demo", *TRAIN_SETS])


def test_errors_name_the_file_in_one_line(work: Path, capsys):
    (work / "ds" / "dataset.json").write_text(json.dumps({"format": "something else"}))
    code, err = _run(["predict", str(work / "run"), str(work / "ds"), str(work / "p.parquet")], capsys)
    assert code == 2 and "dataset.json" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------------------
# ingest and download
# ------------------------------------------------------------------------------------------------
def _png(path: Path, value: int = 120) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(path)


def test_ids_are_the_names_as_given_unless_all_are_canonical_integers(tmp_path):
    for name in ("012345", "+12345", "12345"):
        _png(tmp_path / "src" / f"{name}.png")
    assert main(["ingest", str(tmp_path / "src"), str(tmp_path / "ds"), "--size", "16", "--workers", "1",
                 "--quiet"]) == 0
    assert sorted(Dataset(tmp_path / "ds").ids.tolist()) == ["+12345", "012345", "12345"]
    for name in ("7", "12", "300"):
        _png(tmp_path / "ints" / f"{name}.png")
    assert main(["ingest", str(tmp_path / "ints"), str(tmp_path / "di"), "--size", "16", "--workers", "1",
                 "--quiet"]) == 0
    assert sorted(Dataset(tmp_path / "di").ids.tolist()) == [7, 12, 300]


def test_killed_ingest_with_text_ids_resumes_and_appends(tmp_path, monkeypatch):
    import astrovader.data.ingest as ing

    for i in range(80):
        _png(tmp_path / "src" / f"gal-{i:03d}.png", i)
    real, calls = ing.preprocess, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] > 50:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ing, "preprocess", dying)
    with pytest.raises(KeyboardInterrupt):
        ing.ingest_folder(tmp_path / "src", tmp_path / "ds", size=16, workers=1, progress=False, commit_every=16)
    monkeypatch.setattr(ing, "preprocess", real)
    assert main(["ingest", str(tmp_path / "src"), str(tmp_path / "ds"), "--size", "16", "--workers", "1",
                 "--quiet"]) == 0
    ds = Dataset(tmp_path / "ds")
    assert ds.complete and sorted(ds.ids.tolist()) == [f"gal-{i:03d}" for i in range(80)]
    _png(tmp_path / "more" / "gal-999.png")
    assert main(["ingest", str(tmp_path / "more"), str(tmp_path / "ds"), "--size", "16", "--workers", "1",
                 "--append", "--quiet"]) == 0
    assert len(Dataset(tmp_path / "ds")) == 81


def test_fits_infinities_are_saturated_not_black(tmp_path):
    data = np.tile(np.linspace(0, 100, 32, dtype=np.float32), (32, 1))
    data[10:14, 10:14] = np.inf
    data[0, 0] = np.nan
    (tmp_path / "src").mkdir()
    fits.PrimaryHDU(data).writeto(tmp_path / "src" / "1.fits")
    assert main(["ingest", str(tmp_path / "src"), str(tmp_path / "ds"), "--size", "32", "--crop", "1",
                 "--workers", "1", "--quiet"]) == 0
    img = Dataset(tmp_path / "ds").load()[0, 0]
    # FITS rows run bottom-up: FITS rows 10..13 are our rows 18..21
    assert img[18:22, 10:14].min() == 255 and img[31, 0] == 0


def test_an_ingest_where_every_input_fails_is_an_error(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    for i in range(3):
        (tmp_path / "src" / f"{i}.png").write_bytes(b"not a png")
    code, err = _run(["ingest", str(tmp_path / "src"), str(tmp_path / "ds"), "--quiet"], capsys)
    assert code == 2 and "none of the 3 images" in err and "ingest_report.csv" in err


def test_labels_relative_to_the_parent_folder_are_explained(tmp_path, capsys):
    for i in range(3):
        _png(tmp_path / "gz" / "images" / f"{i}.png")
    pd.DataFrame({"file": [f"images/{i}.png" for i in range(3)], "label": [0, 1, 0]}).to_csv(
        tmp_path / "gz" / "labels.csv", index=False)
    code, err = _run(["ingest", str(tmp_path / "gz" / "images"), str(tmp_path / "ds"), "--labels",
                      str(tmp_path / "gz" / "labels.csv"), "--quiet"], capsys)
    assert code == 2 and "relative to the folder" in err and str(tmp_path / "gz") in err


def test_ingest_workers_end_with_a_killed_parent(tmp_path):
    (tmp_path / "src").mkdir()
    rng = np.random.default_rng(0)
    for i in range(200):  # large noisy frames: measuring each galaxy frame keeps the workers busy for seconds
        Image.fromarray(rng.integers(0, 255, (400, 400), dtype=np.uint8)).save(tmp_path / "src" / f"{i}.png")
    script = ("from astrovader.data.ingest import ingest_folder\n"
              f"ingest_folder({str(tmp_path / 'src')!r}, {str(tmp_path / 'ds')!r}, size=16, workers=2, "
              "progress=False, crop='3xR90')\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    children: list[int] = []
    deadline = time.time() + 60
    while time.time() < deadline and len(children) < 2:
        time.sleep(0.2)
        path = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        children = [int(c) for c in path.read_text().split()] if path.exists() else []
    assert proc.poll() is None, "the ingest finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert children, "the ingest started no worker processes"
    time.sleep(3)

    def alive(pid: int) -> bool:
        status = Path(f"/proc/{pid}/status")
        return status.exists() and "\nState:\tZ" not in status.read_text()

    assert not [c for c in children if alive(c)]


def test_download_names_a_bad_cell(tmp_path, capsys):
    pd.DataFrame({"id": [1, 2], "ra": [10.0, 11.0], "dec": ["1.5", "abc"], "petro_r90": [5.0, 6.0]}).to_csv(
        tmp_path / "cat.csv", index=False)
    code, err = _run(["download", str(tmp_path / "cat.csv"), str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 2 and "row 3" in err and "column dec" in err and "'abc'" in err
