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
