"""One writer at a time: an advisory lock per run directory, dataset and Dask output folder.

A command that writes into a folder holds ``.<folder>.astrovader-lock`` beside it (an ``fcntl.flock`` lock, so
the kernel releases it when the process dies, however it dies) for its whole life. A second writer is refused at
once with the holder's PID, host and command. A lock file left by a process that is gone is taken over with a
warning. The lock lives beside the folder, not in it, so a folder that does not exist yet can be locked and a
refused command creates nothing.

On systems without ``fcntl`` (Windows) the lock is a no-op.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from astrovader.data.outputs import process_alive
from astrovader.errors import BusyError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class LockedError(BusyError):
    """Another astrovader process is writing the same folder; the message names it."""


def lock_path(folder: str | os.PathLike) -> Path:
    folder = Path(folder).resolve()
    return folder.with_name(f".{folder.name}.astrovader-lock")


def _holder(text: str) -> dict:
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


@contextmanager
def exclusive(folder: str | os.PathLike, command: str = "") -> Iterator[None]:
    """Hold the write lock of ``folder`` for the block, or raise :class:`LockedError` naming its holder."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            os.close(fd)
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["time"])) if "time" in info else "?"
            raise LockedError(f"{Path(folder)}: in use by another astrovader process (PID {info.get('pid', '?')} on "
                              f"{info.get('host', '?')}, `{info.get('command', '?')}`, since {since}); wait for it "
                              "to finish or stop it, then run this again") from None
        # the file may have been removed by the previous holder between our open and our lock: lock the live one
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        old = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        if old.get("host") == socket.gethostname() and old.get("pid") and not process_alive(old.get("pid")):
            print(f"astrovader: taking over the lock of {Path(folder)} left by PID {old['pid']} (no longer "
                  "running; it was killed or crashed)", file=sys.stderr)
        body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command or " ".join(sys.argv),
                           "time": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, body, 0)
        yield
    finally:
        try:
            os.unlink(path)  # while still locked, so no one can lock the old file after us
        except FileNotFoundError:
            pass
        os.close(fd)
