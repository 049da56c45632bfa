"""Every example at the end of a command's ``--help`` runs, as typed, in a folder prepared like a user's.

The examples are run in dependency order (simulate, ingest, split, train, then what uses the run) in one
sandbox. Where an example would take minutes (the demo's 8,000 galaxies, a preset's full schedule) or reach the
network (download), a few arguments appended after it make it small or point it at a local server; appended
arguments only shrink the job, so an option the example itself misspells still fails here.
"""

from __future__ import annotations

import io
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from astrovader.cli import EXAMPLES, main

from .conftest import serving

SMALL_SCHEDULE = [f"--set={k}" for k in (
    "train.gamma_epochs=1", "train.anneal_epochs=1", "train.static_epochs=1", "train.periods=1",
    "train.gmm_init_batches=2", "train.batch_size=16")]
SHRINK: dict[str, list[str]] = {
    "simulate": ["--n", "60"],
    "split": ["--batch-size", "4"],
    "train": SMALL_SCHEDULE,
    "choose-k": ["--max-components", "4", "--batch", "16", "--repeats", "3"],
    "explore": ["--steps", "3", "--traverse-steps", "3", "--n-per-component", "2"],
    "report": ["--max-images", "40"],
    "describe": ["--members", "20", "--detailed", "4"],
    "benchmark": ["--n", "60", "--seeds", "1", "--epochs-scale", "0.02", "--baselines", "kmeans",
                  "--ceilings", "knn_pixels", "--set", "train.batch_size=16"],  # the CNN and statmorph: test_benchmark
    "demo": ["--n", "172"],
}
ORDER = ["presets", "summary", "simulate", "download", "ingest", "split", "train", "check", "predict", "describe",
         "report", "choose-k", "generate", "explore", "benchmark", "demo"]


def test_every_command_with_an_example_is_in_the_order():
    assert set(ORDER) == set(EXAMPLES)


@pytest.fixture
def jpeg_server():
    buf = io.BytesIO()
    Image.new("RGB", (256, 256), (40, 30, 20)).save(buf, format="JPEG")
    with serving(buf.getvalue()) as address:
        yield address + "/?ra={ra}&dec={dec}&scale={scale}&w={size}"


@pytest.mark.slow
def test_every_help_example_runs(tmp_path, monkeypatch, jpeg_server, capsys):
    monkeypatch.chdir(tmp_path)
    shrink = dict(SHRINK, download=["--url-template", jpeg_server, "--delay", "0", "--quiet"])
    for name in ORDER:
        if name == "ingest":  # the example's inputs: cut-outs named by objid and a labels table keyed by it
            sims = pd.read_parquet("sims/catalog.parquet")
            from astrovader.data.dataset import Dataset

            imgs = Dataset("sims").load()
            Path("cutouts").mkdir(exist_ok=True)
            for objid, img in zip(sims["id"], imgs, strict=True):
                Image.fromarray(np.repeat(img[0], 2, 0).repeat(2, 1)).save(f"cutouts/{1000 + objid}.png")
            pd.DataFrame({"objid": 1000 + sims["id"], "kind": sims["class_name"]}).to_csv("labels.csv", index=False)
            for f in Path("cutouts").glob("*.jpg"):  # the download example's grey squares are not galaxies
                f.unlink()
        if name == "download":
            pd.DataFrame({"objid": [587722981736120347, 587722981736186000], "ra": [10.1, 10.2],
                          "dec": [0.1, 0.2], "petroR90_r": [5.0, 6.0]}).to_csv("gz2_hart16.csv", index=False)
        argv = shlex.split(EXAMPLES[name])[1:] + shrink.get(name, [])
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 0, f"{EXAMPLES[name]}: exit {code}\n{err[-2000:]}"
    assert Path("run/model.safetensors").is_file() and Path("predictions.fits").is_file()
    assert Path("report/report.html").is_file() and Path("figures/explorer.html").is_file()
    assert Path("synthetic.png").is_file() and Path("components.csv").is_file()
