"""Download SDSS colour JPEG cut-outs, one per catalogue object, as the paper did (section 2).

Each object gets a ``size`` x ``size`` (256) JPEG at a pixel scale of ``scale_factor`` x petroR90_r
(0.02 x) arcsec, so every galaxy fills a similar fraction of its frame. The downloader is built for
hundreds of thousands of requests to a shared public service:

- a few threads with one global politeness delay between request starts;
- retries with exponential back-off for transient failures (HTTP 5xx/429/408, timeouts, dropped
  connections, truncated or invalid bodies); permanent HTTP 4xx errors are not retried;
- every file is verified (Pillow decodes it completely at the requested size) and written atomically
  (temp file, then rename), so ``OUT/<id>.jpg`` exists only when valid;
- resumable: a re-run skips files already present and valid and fetches only the rest;
- ``OUT/manifest.csv`` lists every object with status ``ok`` or ``failed`` and the reason.

Only the standard library is used (urllib), so nothing extra needs installing.
"""

from __future__ import annotations

import csv
import http.client
import io
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from astrovader.data.dataset import atomic_write_bytes
from astrovader.data.limits import plain_file_name
from astrovader.errors import InputError

# Cut-out services, all taking ra, dec (degrees), scale (arcsec per pixel), width and height (pixels). SkyServer's
# REST service (DR17) is the current one; the retired DR7 CasJobs service the paper used is kept by name.
SERVICES = {
    "dr17": ("https://skyserver.sdss.org/dr17/SkyServerWS/ImgCutout/getjpeg?"
             "ra={ra}&dec={dec}&scale={scale}&width={size}&height={size}"),
    "dr7": ("http://casjobs.sdss.org/ImgCutoutDR7/getjpeg.aspx?"
            "ra={ra}&dec={dec}&scale={scale}&width={size}&height={size}"),
}
DEFAULT_SERVICE = "dr17"
DEFAULT_URL_TEMPLATE = SERVICES[DEFAULT_SERVICE]
MANIFEST = "manifest.csv"
USER_AGENT = "astrovader-downloader/0.1 (galaxy cut-outs for research)"


class _Retryable(Exception):
    pass


class _Permanent(Exception):
    pass


@dataclass
class DownloadResult:
    id: object
    file: str
    status: str  # ok | failed
    reason: str = ""
    attempts: int = 0
    url: str = ""
    cached: bool = False


@dataclass
class DownloadReport:
    out: Path
    results: list[DownloadResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> list[DownloadResult]:
        return [r for r in self.results if r.status == "ok"]

    @property
    def failed(self) -> list[DownloadResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def fetched(self) -> int:
        return sum(1 for r in self.results if r.status == "ok" and not r.cached)

    def summary(self) -> str:
        cached = len(self.ok) - self.fetched
        return (f"{len(self.results):,} objects: {self.fetched:,} downloaded, {cached:,} already present, "
                f"{len(self.failed):,} failed ({self.seconds:.1f} s); manifest {self.out / MANIFEST}")


def verify_image(data: bytes, size: int) -> str | None:
    """None when ``data`` decodes completely as a ``size`` x ``size`` image, else the reason it does not."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        return "empty response body"
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size != (size, size):  # the header's size, checked before a single pixel is decoded
                return f"wrong size: {im.size[0]}x{im.size[1]}, expected {size}x{size}"
            im.load()
    except Image.DecompressionBombError as exc:
        return f"refused as a possible decompression bomb ({exc})"
    except UnidentifiedImageError:
        head = data[:60].decode("ascii", "replace").replace("\n", " ")
        return f"not an image (body starts {head!r})"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"corrupt or truncated image ({exc})"
    return None


class _RateLimiter:
    """Spaces request *starts* by ``delay`` seconds across all threads (politeness to the server)."""

    def __init__(self, delay: float):
        self.delay = delay
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self) -> None:
        if self.delay <= 0:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.delay
        if start > now:
            time.sleep(start - now)


def _fetch_once(url: str, timeout: float, size: int) -> bytes:
    max_bytes = 64 * 2**10 + 4 * 3 * size * size  # an uncompressed RGB image plus headers: no JPEG is larger
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            declared = resp.headers.get("Content-Length")
            if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
                raise _Permanent(f"response of {int(declared):,} bytes, above the {max_bytes:,} a "
                                 f"{size}x{size} cut-out can need")
            data = resp.read(max_bytes + 1)  # never more than a cut-out can be, whatever the server says
            if len(data) > max_bytes:
                raise _Permanent(f"response longer than the {max_bytes:,} bytes a {size}x{size} cut-out can need")
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from None
        raise _Permanent(f"HTTP {exc.code} {exc.reason}") from None
    except http.client.IncompleteRead as exc:
        raise _Retryable(f"truncated response ({len(exc.partial)} bytes received, connection closed)") from None
    except TimeoutError:
        raise _Retryable(f"timed out after {timeout:g} s") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise _Retryable(f"timed out after {timeout:g} s") from None
        raise _Retryable(f"connection error ({exc.reason})") from None
    except (http.client.HTTPException, ConnectionError, OSError) as exc:
        raise _Retryable(f"connection error ({type(exc).__name__}: {exc or 'dropped'})") from None
    problem = verify_image(data, size)
    if problem:
        raise _Retryable(problem)
    return data


def _download_one(obj_id: object, url: str, dest: Path, *, size: int, timeout: float, retries: int,
                  backoff: float, limiter: _RateLimiter) -> DownloadResult:
    reason = ""
    for attempt in range(1, retries + 2):
        limiter.wait()
        try:
            data = _fetch_once(url, timeout, size)
        except _Permanent as exc:
            return DownloadResult(obj_id, dest.name, "failed", str(exc), attempt, url)
        except _Retryable as exc:
            reason = str(exc)
            if attempt <= retries:
                time.sleep(backoff * 2 ** (attempt - 1))
            continue
        atomic_write_bytes(dest, data)
        return DownloadResult(obj_id, dest.name, "ok", "", attempt, url)
    return DownloadResult(obj_id, dest.name, "failed", f"{reason} (after {retries + 1} attempts)", retries + 1, url)


def _load_targets(catalog: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    if isinstance(catalog, pd.DataFrame):
        frame, name = catalog, "catalogue"
    else:
        from astrovader.data.catalogs import read_catalog

        frame, name = read_catalog(catalog), str(catalog)
    missing = [c for c in ("id", "ra", "dec", "petro_r90") if c not in frame.columns]
    if missing:
        raise InputError(f"{name}: missing column(s) {missing} (need id, ra, dec, petro_r90 or petroR90_r)")
    for col in ("ra", "dec", "petro_r90"):  # a text cell (e.g. dec=abc) is named by row and column, not cast blindly
        numbers = pd.to_numeric(frame[col], errors="coerce")
        text = numbers.isna() & frame[col].notna()
        if text.any():
            row = int(np.flatnonzero(text.to_numpy())[0])
            raise InputError(f"{name}: row {row + 2} (id {frame['id'].iloc[row]}), column {col}: "
                             f"{frame[col].iloc[row]!r} is not a number; fix that cell")
        frame = frame.assign(**{col: numbers})
    bad = ~(np.isfinite(frame["ra"].astype(float)) & np.isfinite(frame["dec"].astype(float))
            & (frame["petro_r90"].astype(float) > 0))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{name}: row {row + 2} (id {frame['id'].iloc[row]}): ra/dec must be finite and "
                         f"petro_r90 > 0, got ra={frame['ra'].iloc[row]}, dec={frame['dec'].iloc[row]}, "
                         f"petro_r90={frame['petro_r90'].iloc[row]}")
    if frame["id"].dropna().duplicated().any():
        raise InputError(f"{name}: id {frame.loc[frame['id'].duplicated(), 'id'].iloc[0]} appears more than once")
    return frame


def download_cutouts(catalog: str | os.PathLike | pd.DataFrame, out: str | os.PathLike, *,
                     url_template: str = DEFAULT_URL_TEMPLATE, workers: int = 4, delay: float = 0.1,
                     retries: int = 4, backoff: float = 1.0, timeout: float = 30.0, size: int = 256,
                     scale_factor: float = 0.02, limit: int | None = None,
                     progress: bool = True) -> DownloadReport:
    """Fetch ``OUT/<id>.jpg`` for every catalogue row; see the module docstring for the guarantees."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    targets = _load_targets(catalog)
    if limit is not None:
        targets = targets.head(limit)
    report = DownloadReport(out)
    todo = []
    for obj_id, ra, dec, r90 in zip(targets["id"].tolist(), targets["ra"].astype(float),
                                    targets["dec"].astype(float), targets["petro_r90"].astype(float), strict=True):
        url = url_template.format(ra=f"{ra:.6f}", dec=f"{dec:.6f}", scale=f"{scale_factor * r90:.6f}", size=size,
                                  id=obj_id)
        name = plain_file_name(obj_id)
        if name is None:  # '../x', 'sub/x', '' would write outside OUT or nowhere: reported, never joined
            report.results.append(DownloadResult(obj_id, "", "failed", "id is not a plain file name (empty, or "
                                                 "holds a path separator, '..' or a control character); skipped",
                                                 0, url))
            continue
        dest = out / f"{name}.jpg"
        if dest.is_file() and verify_image(dest.read_bytes(), size) is None:
            report.results.append(DownloadResult(obj_id, dest.name, "ok", "", 0, url, cached=True))
        else:
            todo.append((obj_id, url, dest))
    limiter = _RateLimiter(delay)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="img", desc="download")
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(_download_one, i, u, d, size=size, timeout=timeout, retries=retries,
                                   backoff=backoff, limiter=limiter) for i, u, d in todo]
            for fut in as_completed(futures):
                report.results.append(fut.result())
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        order = {i: k for k, i in enumerate(targets["id"].tolist())}
        report.results.sort(key=lambda r: order.get(r.id, 0))
        _write_manifest(out / MANIFEST, report.results)
    report.seconds = time.perf_counter() - t0
    return report


def _write_manifest(path: Path, results: list[DownloadResult]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "file", "status", "reason", "attempts", "url"])
    for r in results:
        w.writerow(["" if pd.isna(r.id) else r.id, r.file if r.status == "ok" else "", r.status, r.reason,
                    r.attempts, r.url])
    atomic_write_bytes(path, buf.getvalue().encode())
