"""Outputs carry their provenance: what made a catalogue or a synthetic cube is readable from the file itself."""

from __future__ import annotations

import pyarrow.parquet as pq
from astropy.io import fits

from astrovader.cli import main
from astrovader.runs import weights_sha256

from .test_faults import pristine  # noqa: F401 - the module's fixture: a dataset and a finished tiny run

KEYS = ("ASTROVER", "DATE", "RUNDIR", "WEIGHTS", "NCOMP", "NLATENT", "SEED", "COMMAND")


def test_catalogues_and_cubes_name_their_model(pristine, tmp_path):  # noqa: F811
    run, ds = pristine / "run", pristine / "ds"
    assert main(["predict", str(run), str(ds), str(tmp_path / "p.parquet"), "--quiet"]) == 0
    assert main(["predict", str(run), str(ds), str(tmp_path / "p.fits"), "--quiet"]) == 0
    assert main(["generate", str(run), str(tmp_path / "g.fits"), "--n", "5", "--quiet"]) == 0
    digest = weights_sha256(run)
    meta = {k.decode(): v.decode() for k, v in pq.read_schema(tmp_path / "p.parquet").metadata.items()}
    assert all(k in meta for k in KEYS), meta
    assert meta["WEIGHTS"] == digest and meta["NCOMP"] == "3" and meta["NLATENT"] == "4"
    assert "RUNSTATE" not in meta  # a finished run
    with fits.open(tmp_path / "p.fits") as hdul:
        head = hdul["PREDICTIONS"].header
        assert all(k in head for k in KEYS)
        assert head["WEIGHTS"] == digest and head["COMMAND"].startswith("astrovader predict")
    with fits.open(tmp_path / "g.fits") as hdul:
        head = hdul[0].header
        assert head["WEIGHTS"] == digest and head["CLUSTERS"] == "drawn" and "BUNIT" in head


def test_every_output_carries_typed_documented_keys(pristine, tmp_path):  # noqa: F811
    """Numbers are numbers with a comment and unit, prediction catalogues name their dataset and carry each row's
    split, CSV tables have a provenance sidecar, and cubes state their pixel scale where it is known."""
    import json

    import numpy as np
    import pandas as pd

    from astrovader.data.dataset import write_dataset
    from astrovader.data.selection import apply_split

    run, ds = pristine / "run", tmp_path / "ds"
    imgs = np.asarray(__import__("astrovader.data.dataset", fromlist=["Dataset"]).Dataset(pristine / "ds").load())
    write_dataset(ds, imgs, pd.DataFrame({"id": np.arange(len(imgs))}), meta={"pixel_scale_arcsec": 0.396})
    apply_split(ds, fractions=(0.8, 0.1, 0.1), batch_size=10)
    assert main(["predict", str(run), str(ds), str(tmp_path / "p.fits"), "--quiet"]) == 0
    assert main(["predict", str(run), str(ds), str(tmp_path / "p.parquet"), "--quiet"]) == 0
    with fits.open(tmp_path / "p.fits") as hdul:
        head, data = hdul["PREDICTIONS"].header, hdul["PREDICTIONS"].data
        assert isinstance(head["NCOMP"], int) and isinstance(head["SEED"], int) and isinstance(head["IMGSIZE"], int)
        assert "components" in head.comments["NCOMP"] and "pixel" in head.comments["IMGSIZE"]
        assert head["DATASET"] == str(ds.resolve())
        assert set(data["split"]) == {"train", "validation", "test"}
    frame = pd.read_parquet(tmp_path / "p.parquet")
    split = pd.read_parquet(ds / "catalog.parquet")["split"]
    assert (frame["split"].to_numpy() == split.to_numpy()).all()
    assert main(["describe", str(run), str(ds), str(tmp_path / "c.csv"), "--members", "20", "--detailed", "2",
                 "--quiet"]) == 0
    for name in ("c.csv", "c_galaxies.csv"):
        side = json.loads((tmp_path / f"{name}.provenance.json").read_text())
        assert all(k in side for k in KEYS) and side["DATASET"] == str(ds) and side["SPLIT"] == "all"
    assert main(["generate", str(run), str(tmp_path / "g.fits"), "--n", "3", "--quiet"]) == 0
    with fits.open(tmp_path / "g.fits") as hdul:
        head = hdul[0].header
        assert "MODEL" not in head  # one hash: WEIGHTS, documented in its comment
        assert "sha256" in head.comments["WEIGHTS"] and head.comments["WEIGHTS"] != ""
