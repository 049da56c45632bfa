from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not present beside the repository")
    return SHARED


@pytest.fixture(scope="session")
def shared_data(shared_dir: Path) -> Path:
    d = shared_dir / "data"
    if not d.is_dir():
        pytest.skip("../shared/data is not present")
    return d


def blob_images(n: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three easy classes of synthetic blobs (small round, large faint, thin bar) as uint8 images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    out = np.empty((n, 1, size, size), np.uint8)
    labels = np.arange(n) % 3
    s = size / 32
    for i, c in enumerate(labels):
        if c == 0:
            im = np.exp(-(xx**2 + yy**2) / (2 * (3 * s) ** 2))
        elif c == 1:
            im = 0.5 * np.exp(-(xx**2 + yy**2) / (2 * (7 * s) ** 2))
        else:
            im = np.exp(-(xx**2 / (2 * (8 * s) ** 2) + yy**2 / (2 * (1.5 * s) ** 2)))
        im = im + rng.normal(0, 0.03, im.shape)
        out[i, 0] = np.clip(im * 255, 0, 255).astype(np.uint8)
    return out, labels


@pytest.fixture
def blob_dataset(tmp_path: Path):
    from astrovader.data.dataset import write_dataset

    imgs, labels = blob_images(240, size=16)
    return write_dataset(tmp_path / "blobs", imgs, pd.DataFrame({"id": np.arange(len(imgs)), "true_class": labels}))


@contextmanager
def serving(body: bytes):
    """A local HTTP server that answers every GET with ``body`` (and its Content-Length); yields its address."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
