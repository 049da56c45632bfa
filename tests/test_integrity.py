"""Data that cannot be silently mismatched: the row-image link, the run-split link, one writer per folder, and
outputs that are complete or absent.

Each case is something a user, a batch system or a shared cluster does; each ends in the right result or a
one-line refusal naming the culprit (exit 2), with nothing the user had changed (checksums before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from astrovader.cli import main
from astrovader.data.dataset import Dataset

from .test_faults import TRAIN_SETS, _run, pristine, work  # noqa: F401  (the shared damaged-copy fixtures)


def _sums(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and len([ln for ln in err.splitlines() if "error:" in ln]) == 1, err
    for n in needles:
        assert n in err, err


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------------------------------------
# the row-image link
# ------------------------------------------------------------------------------------------------
def test_a_resorted_catalogue_is_realigned_and_check_flags_it(work, capsys):  # noqa: F811
    assert main(["predict", str(work / "run"), str(work / "ds"), str(work / "before.parquet"), "--quiet"]) == 0
    cat = pd.read_parquet(work / "ds" / "catalog.parquet")
    cat.sample(frac=1.0, random_state=1).to_parquet(work / "ds" / "catalog.parquet", index=False)  # as pandas users do
    assert main(["predict", str(work / "run"), str(work / "ds"), str(work / "after.parquet"), "--quiet"]) == 0
    before = pd.read_parquet(work / "before.parquet").set_index("id")
    after = pd.read_parquet(work / "after.parquet").set_index("id").loc[before.index]
    np.testing.assert_allclose(after[["z_0", "p_0"]].to_numpy(), before[["z_0", "p_0"]].to_numpy(), atol=1e-6)
    ds = Dataset(work / "ds")
    assert ds.realigned and (ds.catalog["true_class"].to_numpy() == cat["true_class"].to_numpy()).all()
    assert _run(["check", str(work / "ds")], capsys)[0] == 1 and "re-sorted" in _run.out  # type: ignore[attr-defined]


@pytest.mark.parametrize("edit", ["truncated", "ids changed", "resorted and truncated"])
def test_an_edited_catalogue_is_refused_by_every_reader(work, capsys, edit):  # noqa: F811
    path = work / "ds" / "catalog.parquet"
    cat = pd.read_parquet(path)
    if edit == "truncated":
        cat = cat.iloc[30:]
    elif edit == "ids changed":
        cat = cat.assign(id=cat["id"] + 1)
    else:
        cat = cat.sample(frac=1.0, random_state=0).iloc[:-30]
    cat.to_parquet(path, index=False)
    meta = json.loads((work / "ds" / "dataset.json").read_text())
    meta["n"] = len(cat)  # "fix n in dataset.json", as a user would to make it open
    (work / "ds" / "dataset.json").write_text(json.dumps(meta))
    before = _sums(work)
    for argv in (["predict", str(work / "run"), str(work / "ds"), str(work / "p.parquet")],
                 ["report", str(work / "run"), str(work / "ds"), str(work / "rep")]):
        code, err = _run(argv, capsys)
        _refused(code, err, "catalog.parquet", "does not match the stored images")
    assert _run(["check", str(work / "ds")], capsys)[0] == 1
    assert _sums(work) == before


def test_changed_pixels_are_found_by_check(work, capsys):  # noqa: F811
    import zarr

    arr = zarr.open_array(str(work / "ds" / "images.zarr"), mode="r+")
    block = np.asarray(arr[0:2])
    arr[0:2] = block[::-1]  # two images swapped: every row still decodes
    code, _ = _run(["check", str(work / "ds")], capsys)
    assert code == 1 and "chunk 0" in _run.out and "changed or moved" in _run.out  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------------
# the run-split link
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def split_run(tmp_path):
    from .conftest import blob_images
    from .test_predict import TINY

    imgs, labels = blob_images(240, size=16, seed=3)
    from astrovader.data.dataset import write_dataset

    write_dataset(tmp_path / "ds", imgs, pd.DataFrame({"id": np.arange(240), "true_class": labels}))
    assert main(["split", str(tmp_path / "ds"), "--fractions", "0.7,0.1,0.2", "--batch-size", "10"]) == 0
    sets = [a for o in TINY for a in ("--set", o)]
    assert main(["train", str(tmp_path / "ds"), str(tmp_path / "run"), "--preset", "demo", *sets, "--quiet"]) == 0
    return tmp_path


def test_a_rewritten_split_is_refused_then_flagged_everywhere(split_run, capsys):
    ds, run = split_run / "ds", split_run / "run"
    before = _sums(ds)
    code, err = _run(["split", str(ds), "--fractions", "0.5,0.1,0.4", "--seed", "7", "--batch-size", "10"], capsys)
    _refused(code, err, "catalog.parquet", "--overwrite")
    assert _sums(ds) == before
    # the same split again changes nothing and is not refused
    assert _run(["split", str(ds), "--fractions", "0.7,0.1,0.2", "--batch-size", "10"], capsys)[0] == 0
    assert _run(["check", str(run)], capsys)[0] == 0
    old = pd.read_parquet(ds / "catalog.parquet")["split"].to_numpy()
    assert _run(["split", str(ds), "--fractions", "0.5,0.1,0.4", "--seed", "7", "--batch-size", "10",
                 "--overwrite"], capsys)[0] == 0
    cat = pd.read_parquet(ds / "catalog.parquet")
    assert (cat["split_previous"].to_numpy() == old).all()
    code, _ = _run(["check", str(run)], capsys)
    assert code == 1 and "rewritten after training" in _run.out  # type: ignore[attr-defined]
    code, err = _run(["report", str(run), str(ds), str(split_run / "rep"), "--split", "test", "--realism", "0",
                      "--quiet"], capsys)
    assert code == 0 and "WARNING" in err and "training rows" in err
    html = (split_run / "rep" / "report.html").read_text()
    banner = html.split('class="banner">')[1].split("</p>")[0]
    assert "held out from training" not in banner and "WARNING" in banner
    code, err = _run(["describe", str(run), str(ds), str(split_run / "c.parquet"), "--split", "test", "--quiet"],
                     capsys)
    assert code == 0 and "not held out" in err
    import pyarrow.parquet as pq

    assert b"TRAINOVL" in pq.read_schema(split_run / "c.parquet").metadata


# ------------------------------------------------------------------------------------------------
# errors that used to be tracebacks
# ------------------------------------------------------------------------------------------------
def test_weights_that_do_not_fit_the_config_are_named(work, capsys):  # noqa: F811
    cfg = (work / "run" / "config.toml").read_text()
    (work / "run" / "config.toml").write_text(cfg.replace("latent_dim = 4", "latent_dim = 8"))
    for argv in (["predict", str(work / "run"), str(work / "ds"), str(work / "p.parquet")],
                 ["generate", str(work / "run"), str(work / "g.png"), "--n", "2"]):
        _refused(*_run(argv, capsys), "model.safetensors", "config.toml")
    assert _run(["check", str(work / "run")], capsys)[0] == 1 and "config.toml" in _run.out  # type: ignore


@pytest.mark.parametrize("device", ["gpu", "cuda:7", "tpu"])
def test_a_bad_device_is_one_line(work, capsys, device):  # noqa: F811
    _refused(*_run(["predict", str(work / "run"), str(work / "ds"), str(work / "p.parquet"), "--device", device],
                   capsys), device)


def test_a_full_disk_during_training_is_one_line_and_keeps_the_checkpoint(work, capsys, monkeypatch):  # noqa: F811
    import astrovader.runs as runs

    real = runs.save_file
    calls = {"n": 0}

    def full_after_two(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                               "\"No space left on device\" })")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(runs, "save_file", full_after_two)
    code, err = _run(["train", str(work / "ds"), str(work / "new"), "--preset", "demo", *TRAIN_SETS], capsys)
    _refused(code, err, "No space left", "--resume")
    assert (work / "new" / "checkpoint.safetensors").is_file()
    assert not list((work / "new").glob(".*tmp*"))


# ------------------------------------------------------------------------------------------------
# nothing replaced without --overwrite; outputs whole or absent
# ------------------------------------------------------------------------------------------------
def test_report_explore_and_choose_k_do_not_replace_files(work, capsys):  # noqa: F811
    (work / "rep").mkdir()
    (work / "rep" / "predictions.parquet").write_bytes(b"the user's own")
    (work / "fig").mkdir()
    (work / "fig" / "gallery.png").write_bytes(b"the user's own")
    (work / "k.png").write_bytes(b"the user's own")
    before = _sums(work)
    _refused(*_run(["report", str(work / "run"), str(work / "ds"), str(work / "rep")], capsys), "--overwrite")
    _refused(*_run(["explore", str(work / "run"), str(work / "ds"), str(work / "fig")], capsys), "gallery.png")
    _refused(*_run(["choose-k", str(work / "run"), str(work / "ds"), "--out", str(work / "k.png")], capsys),
             "k.png")
    assert _sums(work) == before


def test_a_failed_report_leaves_the_earlier_one_whole(work, capsys, monkeypatch):  # noqa: F811
    assert main(["report", str(work / "run"), str(work / "ds"), str(work / "rep"), "--max-images", "60",
                 "--quiet"]) == 0
    before = _sums(work / "rep")
    import astrovader.analysis.report as report

    def dies_half_way(*args, **kwargs):
        out = args[2]
        (out / "figures").mkdir(parents=True, exist_ok=True)
        (out / "figures" / "new.png").write_bytes(b"half")
        raise KeyboardInterrupt  # as a kill would stop it

    monkeypatch.setattr(report, "_make_report", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        report.make_report(work / "run", work / "ds", work / "rep", overwrite=True, progress=False)
    assert _sums(work / "rep") == before
    assert not [p for p in work.iterdir() if p.name.startswith(".rep")]


def test_leftovers_of_killed_commands_are_removed_by_the_rerun(work, capsys):  # noqa: F811
    pid = _dead_pid()
    png_tmp = work / f".g.png.tmp-{pid}.png"
    fits_tmp = work / f".g.fits.tmp-{pid}.fits"
    rep_tmp = work / f".rep.tmp-{pid}"
    png_tmp.write_bytes(b"")
    fits_tmp.write_bytes(b"\0" * 1000)
    rep_tmp.mkdir()
    (rep_tmp / "report.html").write_text("half")
    assert main(["generate", str(work / "run"), str(work / "g.png"), "--n", "4", "--quiet"]) == 0
    assert main(["generate", str(work / "run"), str(work / "g.fits"), "--n", "4", "--quiet"]) == 0
    assert main(["report", str(work / "run"), str(work / "ds"), str(work / "rep"), "--max-images", "60",
                 "--quiet"]) == 0
    assert not png_tmp.exists() and not fits_tmp.exists() and not rep_tmp.exists()
    assert (work / "g.png").stat().st_size > 100


# ------------------------------------------------------------------------------------------------
# one writer per folder: two processes racing, 20 times in a row
# ------------------------------------------------------------------------------------------------
_WORKER = textwrap.dedent("""
    import contextlib, io, json, sys, time
    from pathlib import Path
    from astrovader.cli import main
    sync, me, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    argv = json.loads(sys.argv[4])
    for i in range(rounds):
        (sync / f"ready-{me}-{i}").touch()
        while not (sync / f"go-{i}").exists():
            time.sleep(0.002)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        tmp = sync / f".done-{me}-{i}"
        tmp.write_text(json.dumps({"code": code, "err": err.getvalue()}))
        tmp.rename(sync / f"done-{me}-{i}")  # whole when it appears
""")


def _race(tmp: Path, argv_a: list[str], argv_b: list[str], rounds: int, after_round) -> list[tuple[dict, dict]]:
    sync = tmp / "sync"
    sync.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(sync), w, str(rounds), json.dumps(argv)])
             for w, argv in (("a", argv_a), ("b", argv_b))]
    results = []
    try:
        for i in range(rounds):
            deadline = time.time() + 300
            while not all((sync / f"ready-{w}-{i}").exists() for w in "ab"):
                assert time.time() < deadline and all(p.poll() is None for p in procs)
                time.sleep(0.005)
            (sync / f"go-{i}").touch()
            while not all((sync / f"done-{w}-{i}").exists() for w in "ab"):
                died = [w for w, p in zip("ab", procs, strict=True)
                        if p.poll() is not None and not (sync / f"done-{w}-{i}").exists()]
                assert time.time() < deadline and not died, f"round {i}: worker {died} died"
                time.sleep(0.01)
            pair = tuple(json.loads((sync / f"done-{w}-{i}").read_text()) for w in "ab")
            results.append(pair)
            after_round(i, pair)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return results


@pytest.mark.slow
def test_two_trains_racing_into_one_run_leave_one_whole_run(pristine, tmp_path):  # noqa: F811
    from astrovader.runs import Run

    run = tmp_path / "run"
    a = ["train", str(pristine / "ds"), str(run), "--overwrite", "--preset", "demo", *TRAIN_SETS, "--quiet",
         "--set", "model.n_components=3"]
    b = ["train", str(pristine / "ds"), str(run), "--overwrite", "--preset", "demo", *TRAIN_SETS, "--quiet",
         "--set", "model.n_components=4", "--set", "model.latent_dim=6"]

    def whole(i, pair):
        for r in pair:
            assert r["code"] == 0 or (r["code"] == 2 and "in use by another astrovader process" in r["err"]), r
        opened = Run.open(run, "cpu")
        cfg, state = opened.config, opened.state  # weights, config and checkpoint from one and the same run
        assert state.finished and (cfg.model.n_components, cfg.model.latent_dim) in ((3, 4), (4, 6)), i
        assert not list(tmp_path.glob(".run.astrovader-lock")) and not list(run.glob(".*tmp*"))

    results = _race(tmp_path, a, b, 20, whole)
    assert any(r["code"] == 2 for pair in results for r in pair), "the two trains never overlapped"


@pytest.mark.slow
def test_two_dask_jobs_racing_on_one_folder_leave_one_whole_catalogue(pristine, tmp_path):  # noqa: F811
    out = tmp_path / "parts"
    argv = ["predict", str(pristine / "run"), str(pristine / "ds"), str(out), "--dask", "local:1", "--chunk-rows",
            "64", "--overwrite", "--quiet"]

    def whole(i, pair):
        for r in pair:
            assert r["code"] == 0 or (r["code"] == 2 and "in use by another astrovader process" in r["err"]), r
        frame = pd.read_parquet(out)
        assert sorted(frame["id"]) == list(range(300)), i
        assert not [p for p in out.iterdir() if "tmp" in p.name]
        shutil.rmtree(out)  # so that the next round predicts again instead of finding the parts done

    results = _race(tmp_path, argv, argv, 20, whole)
    assert any(r["code"] == 2 for pair in results for r in pair), "the two jobs never overlapped"


def test_a_stale_lock_is_taken_over_with_a_warning(pristine, tmp_path, capsys):  # noqa: F811
    from astrovader.data.locks import exclusive, lock_path

    lock = lock_path(tmp_path / "run")
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": os.uname().nodename, "command": "astrovader train",
                                "time": time.time()}))
    with exclusive(tmp_path / "run"):
        pass
    assert "taking over the lock" in capsys.readouterr().err and not lock.exists()
