"""Cut-out downloader end to end against a local, failure-injecting HTTP server."""

from __future__ import annotations

import io
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from astrovader.cli import main as cli_main
from astrovader.data.download import MANIFEST, download_cutouts, verify_image

N = 12
# per object: behaviour of attempt 1, 2, ... (the last one repeats)
SCENARIO = {
    0: ["ok"], 1: ["ok"], 2: ["500", "ok"], 3: ["503", "503", "ok"], 4: ["slow", "ok"], 5: ["truncated", "ok"],
    6: ["drop", "ok"], 7: ["html"], 8: ["small"], 9: ["503"], 10: ["404"], 11: ["truncated"],
}
EXPECT_FAIL = {7: "not an image", 8: "wrong size", 9: "HTTP 503", 10: "HTTP 404", 11: "truncated"}


class _Server:
    def __init__(self, images: dict[int, bytes], small: bytes):
        self.images, self.small = images, small
        self.scenario = {k: list(v) for k, v in SCENARIO.items()}
        self.hits: dict[int, int] = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                i = int(q["id"][0])
                with outer.lock:
                    outer.hits[i] = outer.hits.get(i, 0) + 1
                    steps = outer.scenario[i]
                    what = steps[min(outer.hits[i], len(steps)) - 1]
                body = outer.images[i]
                if what in ("500", "503", "404"):
                    self.send_error(int(what))
                    return
                if what == "drop":
                    self.close_connection = True
                    return  # no status line at all: the client sees a dropped connection
                if what == "slow":
                    time.sleep(0.8)
                if what == "html":
                    body = b"<html><body>Server busy</body></html>"
                if what == "small":
                    body = outer.small
                self.send_response(200)
                self.send_header("Content-Type", "text/html" if what == "html" else "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body[: len(body) // 2] if what == "truncated" else body)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                if what == "truncated":
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.stopper = threading.Timer(120, self.httpd.shutdown)  # bounded: stops itself if a test hangs

    @property
    def template(self) -> str:
        port = self.httpd.server_address[1]
        return f"http://127.0.0.1:{port}/cut?id={{id}}&ra={{ra}}&dec={{dec}}&scale={{scale}}&width={{size}}"

    def __enter__(self):
        self.thread.start()
        self.stopper.start()
        return self

    def __exit__(self, *exc):
        self.stopper.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def server(shared_data: Path):
    files = sorted((shared_data / "gz1-sdss" / "images").glob("*.jpeg"))[:N]
    images = {i: _jpeg(Image.open(f).convert("RGB").resize((256, 256), Image.Resampling.LANCZOS))
              for i, f in enumerate(files)}
    small = _jpeg(Image.open(files[0]).convert("RGB").resize((128, 128)))
    with _Server(images, small) as srv:
        yield srv


def _catalog(tmp_path: Path) -> Path:
    path = tmp_path / "cat.csv"
    pd.DataFrame({"objid": range(N), "ra": [150.0 + i for i in range(N)], "dec": [2.0] * N,
                  "petroR90_r": [10.0 + i for i in range(N)]}).to_csv(path, index=False)
    return path


def test_download_with_failures_then_resume(server: _Server, tmp_path: Path):
    out = tmp_path / "cutouts"
    kw = dict(url_template=server.template, workers=4, delay=0.0, retries=2, backoff=0.01, timeout=0.4,
              progress=False)
    rep = download_cutouts(_catalog(tmp_path), out, **kw)
    assert len(rep.results) == N
    ok = {r.id for r in rep.ok}
    failed = {r.id: r.reason for r in rep.failed}
    assert ok == set(range(7)) and set(failed) == set(EXPECT_FAIL)
    for i, word in EXPECT_FAIL.items():
        assert word in failed[i], (i, failed[i])
    for i in range(N):  # a file exists exactly when the object succeeded, and it is valid
        f = out / f"{i}.jpg"
        assert f.exists() == (i in ok)
        if f.exists():
            assert verify_image(f.read_bytes(), 256) is None
    assert not list(out.glob(".*tmp*"))  # no temp files left behind
    assert server.hits[0] == 1 and server.hits[2] == 2 and server.hits[3] == 3 and server.hits[10] == 1
    assert server.hits[7] == server.hits[9] == 3  # 1 try + 2 retries
    manifest = pd.read_csv(out / MANIFEST)
    assert len(manifest) == N and (manifest["status"] == "failed").sum() == len(EXPECT_FAIL)
    # the URL carries the 0.02 x petroR90 pixel scale
    assert "scale=0.200000" in manifest.loc[manifest["id"] == 0, "url"].iloc[0]

    # second run: the server has recovered; one good file was damaged meanwhile
    server.scenario = {k: ["ok"] for k in SCENARIO}
    server.hits = {}
    (out / "1.jpg").write_bytes(b"")
    rep2 = download_cutouts(_catalog(tmp_path), out, **kw)
    assert not rep2.failed and len(rep2.ok) == N
    assert set(server.hits) == set(EXPECT_FAIL) | {1}  # nothing valid was fetched again
    assert all(v == 1 for v in server.hits.values())
    assert rep2.fetched == len(EXPECT_FAIL) + 1


def test_download_cli(server: _Server, tmp_path: Path, capsys):
    server.scenario = {k: ["ok"] for k in SCENARIO}
    rc = cli_main(["download", str(_catalog(tmp_path)), str(tmp_path / "o"), "--url-template", server.template,
                   "--quiet", "--delay", "0", "--timeout", "5", "--limit", "3"])
    assert rc == 0
    assert "3 downloaded" in capsys.readouterr().out


def test_download_rejects_bad_catalog(tmp_path: Path):
    path = tmp_path / "c.csv"
    pd.DataFrame({"id": [1], "ra": [1.0], "dec": [2.0]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="petro_r90"):
        download_cutouts(path, tmp_path / "o", progress=False)
    pd.DataFrame({"id": [1], "ra": [1.0], "dec": [2.0], "petro_r90": [-1.0]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="row 2"):
        download_cutouts(path, tmp_path / "o", progress=False)
