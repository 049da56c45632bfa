"""Hostile and huge inputs: catalogues, datasets and images from elsewhere cannot write, run or exhaust anything.

Each case is a real file a careless collaborator or an attacker could hand over; each asserts the one-line refusal
(exit 2, the file named, no traceback) or the safe result.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from PIL import Image

from astrovader.cli import main
from astrovader.data.dataset import write_dataset
from astrovader.data.limits import plain_file_name
from astrovader.data.outputs import csv_safe, remove_stale_temporaries

from .conftest import serving
from .test_faults import _run, pristine, work  # noqa: F401  (the shared damaged-copy fixtures)
from .test_report_browser import browser  # noqa: F401  (the shared headless-Chromium fixture)


def _one_line_refusal(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len([ln for ln in err.splitlines() if "error:" in ln]) == 1, err
    for needle in needles:
        assert needle in err, err


# ------------------------------------------------------------------------------------------------
# download: ids are names, never paths
# ------------------------------------------------------------------------------------------------
def _jpeg(size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (90, 60, 30)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def cutout_server():
    with serving(_jpeg(16)) as address:
        yield address + "/cut?ra={ra}&id={id}"


def test_download_writes_only_plain_names_inside_the_output_folder(tmp_path, cutout_server, capsys):
    victim = tmp_path / "victim.jpg"
    victim.write_bytes(b"the user's own file")
    out = tmp_path / "deep" / "er" / "out"
    ids = ["../../../victim", str(tmp_path / "abs"), "sub/x", "", "..", "nul", "good", "also-good"]
    pd.DataFrame({"id": ids, "ra": 1.0, "dec": 2.0, "petro_r90": 3.0}).to_csv(tmp_path / "cat.csv", index=False)
    code = main(["download", str(tmp_path / "cat.csv"), str(out), "--url-template", cutout_server, "--size", "16",
                 "--delay", "0", "--retries", "0", "--quiet"])
    assert code == 1, capsys.readouterr().err  # 1: some objects failed, as for any failed download
    assert victim.read_bytes() == b"the user's own file"
    assert not (tmp_path / "abs.jpg").exists() and not (out / "sub").exists()
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jpg"))
    assert written == ["deep/er/out/also-good.jpg", "deep/er/out/good.jpg", "victim.jpg"]
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False, dtype=str)
    assert list(manifest["status"]) == ["failed"] * 6 + ["ok", "ok"]  # every row reported, the run went on
    assert manifest["reason"].iloc[:6].str.contains("not a plain file name").all()
    assert "nan" not in set(manifest["id"])  # an empty id stays empty, never 'nan.jpg'


def test_plain_file_names():
    for bad in ("", ".", "..", "a/b", "a\\b", "../x", "/etc/passwd", "C:x", "CON", "lpt1.jpg", " x", "a\nb",
                float("nan"), None, "x" * 300):
        assert plain_file_name(bad) is None, bad
    for good in ("587722981736120347", "NGC 4414", "gal.001", "M31-halo"):
        assert plain_file_name(good) == good
    assert plain_file_name(12) == "12"


def test_download_refuses_a_response_larger_than_a_cutout_before_decoding(tmp_path):
    from astrovader.data.download import download_cutouts

    big = _jpeg(16) + b"\0" * (2 * 2**20)
    pd.DataFrame({"id": [1], "ra": 1.0, "dec": 2.0, "petro_r90": 3.0}).to_csv(tmp_path / "c.csv", index=False)
    with serving(big) as address:
        rep = download_cutouts(tmp_path / "c.csv", tmp_path / "o", size=16, delay=0, retries=0, progress=False,
                               url_template=address + "/?{ra}")
    assert rep.failed and "above the" in rep.failed[0].reason


# ------------------------------------------------------------------------------------------------
# datasets: nothing named in a store's metadata runs
# ------------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickle_codec_dataset(root: Path, version: int) -> tuple[Path, Path]:
    import pickle

    marker = root / f"PWNED-v{version}"
    ds = root / f"ds-v{version}"
    write_dataset(ds, np.zeros((4, 1, 16, 16), np.uint8))
    store = ds / "images.zarr"
    for f in sorted(store.rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    payload = pickle.dumps(_Payload(str(marker)))
    if version == 3:
        (store / "zarr.json").write_text(json.dumps({
            "zarr_format": 3, "node_type": "array", "shape": [4, 1, 16, 16], "data_type": "uint8",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [4, 1, 16, 16]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}}, "fill_value": 0,
            "codecs": [{"name": "bytes"}, {"name": "numcodecs.pickle", "configuration": {"protocol": 4}}],
            "attributes": {}, "storage_transformers": []}))
        (store / "c" / "0" / "0" / "0").mkdir(parents=True)
        (store / "c" / "0" / "0" / "0" / "0").write_bytes(payload)
    else:
        (store / ".zarray").write_text(json.dumps({
            "zarr_format": 2, "shape": [4, 1, 16, 16], "chunks": [4, 1, 16, 16], "dtype": "|O",
            "compressor": None, "fill_value": None, "order": "C", "filters": [{"id": "pickle", "protocol": 4}],
            "dimension_separator": "."}))
        (store / "0.0.0.0").write_bytes(payload)
    return ds, marker


@pytest.mark.parametrize("version", [3, 2])
def test_a_dataset_naming_a_pickle_codec_is_refused_and_runs_nothing(pristine, tmp_path, capsys, version):  # noqa: F811
    ds, marker = _pickle_codec_dataset(tmp_path, version)
    code, err = _run(["predict", str(pristine / "run"), str(ds), str(tmp_path / "p.parquet")], capsys)
    _one_line_refusal(code, err, "codec", "pickle", "images.zarr")
    code, _ = _run(["check", str(ds)], capsys)
    assert code == 1 and "pickle" in _run.out  # type: ignore[attr-defined]
    assert not marker.exists()


def test_a_zarr_v2_store_is_read(tmp_path):
    import zarr

    from astrovader.data.dataset import Dataset
    from astrovader.health import check_dataset

    imgs = (np.arange(6 * 256) % 251).astype(np.uint8).reshape(6, 1, 16, 16)
    write_dataset(tmp_path / "ds", imgs)
    store = tmp_path / "ds" / "images.zarr"
    import shutil

    shutil.rmtree(store)
    arr = zarr.create_array(store=str(store), shape=imgs.shape, chunks=(4, 1, 16, 16), dtype="uint8",
                            zarr_format=2)
    arr[:] = imgs
    ds = Dataset(tmp_path / "ds")
    np.testing.assert_array_equal(ds.load(), imgs)
    np.testing.assert_array_equal(ds.take([5, 0]), imgs[[5, 0]])
    assert ds.chunk_path(1).name == "1.0.0.0"
    assert check_dataset(tmp_path / "ds").ok


def test_a_store_declaring_huge_images_is_refused_before_allocation(work, capsys):  # noqa: F811
    meta_path = work / "ds" / "images.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["shape"][2:] = [65536, 65536]
    meta["chunk_grid"]["configuration"]["chunk_shape"][2:] = [65536, 65536]
    meta_path.write_text(json.dumps(meta))
    code, err = _run(["predict", str(work / "run"), str(work / "ds"), str(work / "p.parquet")], capsys)
    _one_line_refusal(code, err, "zarr.json", "65536")
    assert _run(["check", str(work / "ds")], capsys)[0] == 1


def test_a_config_with_a_huge_image_size_is_refused(work, capsys):  # noqa: F811
    code, err = _run(["train", str(work / "ds"), str(work / "new"), "--preset", "demo",
                      "--set", "model.image_size=65536"], capsys)
    _one_line_refusal(code, err, "model.image_size", "2048")
    cfg = (work / "run" / "config.toml").read_text()
    (work / "run" / "config.toml").write_text(cfg.replace("image_size = 16", "image_size = 65536"))
    code, err = _run(["predict", str(work / "run"), str(work / "ds"), str(work / "p.parquet")], capsys)
    _one_line_refusal(code, err, "image_size")
    assert _run(["check", str(work / "run")], capsys)[0] == 1


# ------------------------------------------------------------------------------------------------
# sizes: declared sizes are checked before decoding, memory measured
# ------------------------------------------------------------------------------------------------
def _bombs(root: Path) -> dict[str, Path]:
    out = {}
    (root / "header").mkdir()
    h = fits.Header()
    h["SIMPLE"], h["BITPIX"], h["NAXIS"], h["NAXIS1"], h["NAXIS2"] = True, -32, 2, 100_000, 100_000
    out["header"] = root / "header" / "huge.fits"
    out["header"].write_bytes(h.tostring().encode() + b"\0" * 2880)  # 5.8 KB declaring 10^10 pixels
    (root / "png").mkdir()
    out["png"] = root / "png" / "bomb.png"
    Image.new("L", (20_000, 20_000)).save(out["png"], optimize=True)  # ~400 KB declaring 4 x 10^8 pixels
    (root / "gz").mkdir()
    buf = io.BytesIO()
    fits.PrimaryHDU(np.zeros((8000, 8000), np.float32)).writeto(buf)
    out["gz"] = root / "gz" / "big.fits.gz"
    out["gz"].write_bytes(gzip.compress(buf.getvalue(), 9))  # ~250 KB of 256 MB of pixels
    return out


# The command runs as a grandchild of a small Python process: a child forked straight from pytest would count
# pytest's own pages in its peak (Linux keeps the peak across exec). RUSAGE_CHILDREN then holds the largest peak
# of the command and its ingest workers.
_MEASURE = """
import resource, subprocess, sys
run = "import sys; from astrovader.cli import main; sys.exit(main(sys.argv[1:]))"
proc = subprocess.run([sys.executable, "-c", run, *sys.argv[1:]])
print(f"PEAK_KB {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}", file=sys.stderr)
sys.exit(proc.returncode)
"""


@pytest.mark.parametrize("kind", ["header", "png", "gz"])
def test_ingest_of_a_bomb_is_refused_by_name_in_bounded_memory(tmp_path, kind):
    files = _bombs(tmp_path)
    src = files[kind].parent
    proc = subprocess.run([sys.executable, "-c", _MEASURE, "ingest", str(src), str(tmp_path / "out"),
                           "--workers", "1", "--size", "16", "--quiet"], capture_output=True, text=True, timeout=300)
    peak_mb = int(proc.stderr.split("PEAK_KB ")[1].split()[0]) / 1024
    _one_line_refusal(proc.returncode, proc.stderr.split("PEAK_KB")[0], files[kind].name, "limit")
    assert peak_mb < 500, f"{kind}: {peak_mb:.0f} MB"


def test_the_pixel_limit_is_one_setting(tmp_path, monkeypatch):
    from astrovader.data.decode import ImageReadError, decode_image

    Image.new("L", (300, 300), 40).save(tmp_path / "a.png")
    assert decode_image(tmp_path / "a.png").shape == (300, 300, 1)
    monkeypatch.setenv("ASTROVADER_MAX_PIXELS", "10000")
    with pytest.raises(ImageReadError, match="ASTROVADER_MAX_PIXELS"):
        decode_image(tmp_path / "a.png")


def test_a_labels_csv_with_a_million_columns_is_refused_at_once(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    Image.new("L", (32, 32), 90).save(tmp_path / "imgs" / "a.png")
    with open(tmp_path / "labels.csv", "w") as fh:
        fh.write(",".join(["file", *(f"c{i}" for i in range(10**6))]) + "\n")
        fh.write(",".join(["a.png", *("1" for _ in range(10**6))]) + "\n")
    code, err = _run(["ingest", str(tmp_path / "imgs"), str(tmp_path / "out"), "--labels",
                      str(tmp_path / "labels.csv"), "--size", "16", "--workers", "1", "--quiet"], capsys)
    _one_line_refusal(code, err, "labels.csv", "1,000,001 columns")


def test_labels_in_parquet_and_non_utf8_csv(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    for name in ("a", "b"):
        Image.new("L", (32, 32), 90).save(tmp_path / "imgs" / f"{name}.png")
    pd.DataFrame({"file": ["a.png", "b.png"], "kind": ["spiral", "elliptical"]}).to_parquet(tmp_path / "l.parquet")
    assert main(["ingest", str(tmp_path / "imgs"), str(tmp_path / "out"), "--labels", str(tmp_path / "l.parquet"),
                 "--size", "16", "--workers", "1", "--quiet"]) == 0
    assert sorted(pd.read_parquet(tmp_path / "out" / "catalog.parquet")["kind"]) == ["elliptical", "spiral"]
    (tmp_path / "cp1252.csv").write_bytes("file,kind\na.png,caf\xe9\nb.png,x\n".encode("cp1252"))
    code, err = _run(["ingest", str(tmp_path / "imgs"), str(tmp_path / "out2"), "--labels",
                      str(tmp_path / "cp1252.csv"), "--size", "16", "--workers", "1", "--quiet"], capsys)
    _one_line_refusal(code, err, "cp1252.csv", "not UTF-8", "iconv")


def test_grey_with_opaque_alpha_is_accepted_like_rgba(tmp_path):
    from astrovader.data.decode import ImageReadError, decode_image

    Image.new("LA", (20, 20), (77, 255)).save(tmp_path / "la.png")
    arr = decode_image(tmp_path / "la.png")
    assert arr.shape == (20, 20, 1) and int(arr[0, 0, 0]) == 77
    Image.new("LA", (20, 20), (77, 100)).save(tmp_path / "see-through.png")
    with pytest.raises(ImageReadError, match="transparency"):
        decode_image(tmp_path / "see-through.png")


# ------------------------------------------------------------------------------------------------
# outputs: spreadsheets, FITS, suffixes, temporary files
# ------------------------------------------------------------------------------------------------
def test_csv_cells_cannot_become_formulas():
    frame = pd.DataFrame({"name": ["=HYPERLINK(\"http://x\")", "+1", "-cmd", "@SUM(A1)", "disc", None],
                          "value": [-1.5, 2.0, 3.0, 4.0, 5.0, 6.0], "=evil": [1, 2, 3, 4, 5, 6]})
    safe = csv_safe(frame)
    assert list(safe["name"])[:5] == ["'=HYPERLINK(\"http://x\")", "'+1", "'-cmd", "'@SUM(A1)", "disc"]
    assert safe["value"].tolist() == frame["value"].tolist()  # numbers stay numbers
    assert "'=evil" in safe.columns


def test_describe_csv_neutralises_formula_names(pristine, tmp_path, capsys):  # noqa: F811
    names = {"weights": None, "components": {"0": {"name": "=cmd|' /C calc'!A0"}}}
    (tmp_path / "names.json").write_text(json.dumps(names))
    assert main(["describe", str(pristine / "run"), str(pristine / "ds"), str(tmp_path / "c.csv"), "--names",
                 str(tmp_path / "names.json"), "--max-images", "90", "--members", "20", "--detailed", "4",
                 "--quiet"]) == 0
    text = (tmp_path / "c.csv").read_text()
    assert "'=cmd|" in text and ",=cmd" not in text


def test_fits_outputs_escape_non_ascii_paths_and_names(pristine, tmp_path, capsys):  # noqa: F811
    import shutil

    run = tmp_path / "runs é α" / "run"
    shutil.copytree(pristine / "run", run)
    names = {"components": {str(k): {"name": "spirale à bras α"} for k in range(3)}}
    (tmp_path / "names.json").write_text(json.dumps(names))
    out = tmp_path / "préd.fits"
    assert main(["predict", str(run), str(pristine / "ds"), str(out), "--names", str(tmp_path / "names.json"),
                 "--quiet"]) == 0
    with fits.open(out) as hdul:
        header, data = hdul[1].header, hdul[1].data
        assert codecs.decode(header["RUNDIR"], "unicode_escape") == str(run.resolve())
        assert "COMMAND" in header
        named = [v for v in data["component_name"] if v]
        assert named and codecs.decode(named[0], "unicode_escape") == "spirale à bras α"
    cube = tmp_path / "cube é.fits"
    assert main(["generate", str(run), str(cube), "--n", "3", "--quiet"]) == 0
    with fits.open(cube) as hdul:
        assert codecs.decode(hdul[0].header["RUNDIR"], "unicode_escape") == str(run.resolve())
        assert "generate" in hdul[0].header["COMMAND"]


def test_output_suffixes_are_honoured_or_refused(pristine, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "p.fits.gz"
    assert main(["predict", str(pristine / "run"), str(pristine / "ds"), str(out), "--quiet"]) == 0
    assert out.read_bytes()[:2] == b"\x1f\x8b"  # gzip, not Parquet
    with fits.open(out) as hdul:
        assert len(hdul[1].data) == 300
    code, err = _run(["generate", str(pristine / "run"), str(tmp_path / "g.fits.gz"), "--n", "2"], capsys)
    _one_line_refusal(code, err, "g.fits.gz", "--format")
    assert not (tmp_path / "g.fits.gz").exists()


def test_a_job_file_that_is_not_an_object_is_named(work, capsys):  # noqa: F811
    (work / "parts").mkdir()
    (work / "parts" / "_job.json").write_text("[1, 2, 3]")
    code, err = _run(["predict", str(work / "run"), str(work / "ds"), str(work / "parts"), "--dask", "local:1"],
                     capsys)
    _one_line_refusal(code, err, "_job.json", "JSON list")


def test_temporary_file_clean_up_only_takes_dead_processes_own_files(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        star = tmp_path / "*.parquet"
        other_live = tmp_path / f".other.parquet.tmp-{live.pid}.parquet"
        other_dead = tmp_path / f".other.parquet.tmp-{dead.pid}.parquet"
        own_dead = tmp_path / f".*.parquet.tmp-{dead.pid}.parquet"
        own_live = tmp_path / f".*.parquet.tmp-{live.pid}.parquet"
        for f in (other_live, other_dead, own_dead, own_live):
            f.write_bytes(b"x")
        assert remove_stale_temporaries(star) == [own_dead]  # the '*' is a name, not a pattern
        assert other_live.exists() and other_dead.exists() and own_live.exists()
    finally:
        live.kill()
        live.wait()


# ------------------------------------------------------------------------------------------------
# pages: payloads in every user-controlled string, in a real browser
# ------------------------------------------------------------------------------------------------
PAYLOADS = {
    "run": "x</script><script>alert('run')</script>",
    "split": "<script>alert('split')</script>",
    "label": "<img src=x onerror=alert('label')>",
    "math": "$\\frac{1}{$",
    "id": "<svg onload=alert('id')>",
    "column": "<b onmouseover=alert('col')>",
}
RAW_MARKUP = ("<script>alert(", "<img src=x onerror", "<svg onload", "<b onmouseover")


@pytest.fixture(scope="module")
def payload_pages(tmp_path_factory):
    """A report and an explorer page of a run whose path, split, labels, ids and column names carry markup."""
    import shutil

    from .conftest import blob_images
    from .test_analysis import tiny_run

    run, _ = tiny_run(tmp_path_factory)
    root = tmp_path_factory.mktemp("payload")
    hostile_run = Path(str(root) + "/" + PAYLOADS["run"])
    shutil.copytree(run, hostile_run)
    imgs, labels = blob_images(60, size=16, seed=5)
    klass = np.array([PAYLOADS["label"], PAYLOADS["math"], "disc"])[labels]
    cat = pd.DataFrame({"id": [f"{PAYLOADS['id']}{i}" for i in range(60)], "true_class": klass,
                        PAYLOADS["column"]: np.arange(60.0),
                        "split": np.where(np.arange(60) % 2 == 0, PAYLOADS["split"], "train")})
    write_dataset(root / "ds", imgs, cat)
    assert main(["report", str(hostile_run), str(root / "ds"), str(root / "report"), "--split", PAYLOADS["split"],
                 "--quiet"]) == 0
    assert main(["explore", str(hostile_run), str(root / "ds"), str(root / "explore"), "--steps", "3",
                 "--traverse-steps", "3", "--quiet"]) == 0
    return [root / "report" / "report.html", root / "explore" / "explorer.html"]


def test_pages_hold_no_injected_markup(payload_pages):
    for page in payload_pages:
        text = page.read_text(encoding="utf-8")
        for raw in RAW_MARKUP:
            assert raw not in text, (page.name, raw)
    assert "alert(&#x27;split&#x27;)" in payload_pages[0].read_text() or "&lt;script&gt;" in \
        payload_pages[0].read_text()  # the split is shown, as text


def test_pages_with_payloads_run_no_script_in_a_browser(payload_pages, browser):  # noqa: F811
    from selenium.common.exceptions import NoAlertPresentException

    for page in payload_pages:
        browser.get(page.resolve().as_uri())
        assert browser.execute_script("return document.readyState") == "complete"
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018
        injected = browser.execute_script(
            "return Array.from(document.querySelectorAll('script,img,svg,b')).filter(e => "
            "Array.from(e.attributes).some(a => a.name.startsWith('on')) || "
            "(e.tagName === 'SCRIPT' && e.textContent.trim().startsWith('alert('))).length;")
        assert injected == 0, page.name
        errors = [e for e in browser.get_log("browser") if e.get("level") in ("SEVERE", "ERROR")]
        assert not errors, f"{page.name}: console errors: {errors}"

