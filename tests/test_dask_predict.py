"""Survey-scale prediction on Dask: same catalogue as single-process predict, resumable after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from astrovader import AstroVaDEr, Config
from astrovader.data.dataset import write_dataset

from .conftest import blob_images
from .test_predict import TINY

pytest.importorskip("dask.distributed")


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dask")
    imgs, labels = blob_images(20_000, size=16, seed=2)
    ds = write_dataset(tmp / "ds", imgs, pd.DataFrame({"id": np.arange(20_000) * 7 + 3, "true_class": labels}))
    small = write_dataset(tmp / "small", imgs[:600], pd.DataFrame({"id": np.arange(600)}))
    AstroVaDEr(Config.resolve("demo", overrides=TINY)).fit(small, run_dir=tmp / "run", progress=False)
    model = AstroVaDEr.load(tmp / "run")
    model.predict_catalog(ds, tmp / "single.parquet", progress=False)
    return tmp, ds


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "astrovader", "predict", *args]


def test_dask_local_matches_single_process_and_resumes(big):
    tmp, ds = big
    out = tmp / "parts"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = _cli(str(tmp / "run"), str(ds.path), str(out), "--dask", "local:2", "--chunk-rows", "1000", "--quiet")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and len(list(out.glob("part-*.parquet"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the client, scheduler and workers all at once
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert 3 <= len(done_before) < 20, "the kill should land mid-way"
    # A worker killed mid-write leaves a temporary file; make sure one exists whatever the kill's timing.
    undone = next(i for i in range(20) if f"part-{i:05d}.parquet" not in done_before)
    (out / f".part-{undone:05d}.parquet.tmp-99999999.parquet").write_bytes(b"half a parquet file")
    res = subprocess.run(cmd[:-1], env=env, capture_output=True, text=True, check=True)
    assert f"{len(done_before)} already done, {20 - len(done_before)} to predict" in res.stdout
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 20
    for p in parts:  # finished parts were not redone
        if p.name in done_before:
            assert p.stat().st_mtime_ns == done_before[p.name]
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temporary files left behind"
    dask_cat = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    single = pd.read_parquet(tmp / "single.parquet")
    assert dask_cat["id"].tolist() == single["id"].tolist()
    probs = [c for c in single.columns if c.startswith("p_")]
    np.testing.assert_allclose(dask_cat[probs].to_numpy(), single[probs].to_numpy(), atol=1e-5)
    np.testing.assert_allclose(dask_cat["z_0"], single["z_0"], atol=1e-4)
    assert (dask_cat["component"].to_numpy() == single["component"].to_numpy()).mean() > 0.999


def test_dask_predicts_with_a_shipped_model_by_name_and_records_bf16(tmp_path):
    """A pretrained model's name reaches the workers as its packaged folder (it used to become ./NAME), and the
    opt-in bf16 arithmetic is recorded in every part and in the job, so float32 parts are never mixed in."""
    from astrovader.predict import JOB, predict_dask

    imgs = np.random.default_rng(0).integers(0, 256, (48, 1, 64, 64), dtype=np.uint8)
    ds = write_dataset(tmp_path / "ds", imgs)
    out = predict_dask("sdss64-k3-gz1", ds.path, tmp_path / "parts", scheduler="local:1", chunk_rows=24,
                       device="cpu", progress=False, precision="bf16")
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 2
    import pyarrow.parquet as pq

    assert all(pq.read_schema(p).metadata[b"PRECISN"] == b"bf16" for p in parts)
    assert '"precision": "bf16"' in (out / JOB).read_text()
    with pytest.raises(FileExistsError, match="precision"):
        predict_dask("sdss64-k3-gz1", ds.path, out, scheduler="local:1", chunk_rows=24, device="cpu",
                     progress=False)
