"""A run folder owned by one process at a time.

:func:`make_folder` creates an output folder, or says in one line why it cannot (a file in the
way, a read-only file system, no permission). :func:`run_folder` then takes an exclusive lock on
``OUT/.lock`` (``fcntl.flock``; the file holds the holder's pid, host and command) for as long as
the run lasts, and removes the temporaries that a writer killed mid-write left in the folder. A
second process on the same folder is refused with a line naming the holder, instead of two runs
overwriting each other's checkpoints and results. The lock goes with its process, so a killed
run never leaves the folder locked.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from attentionrnn.engine.errors import UserError
from attentionrnn.engine.state import clean_stale_temporaries

try:
    import fcntl
except ImportError:  # not on POSIX: no lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK", "make_folder", "run_folder", "run_lock"]

LOCK = ".lock"


def make_folder(path: str | os.PathLike, what: str = "--out") -> Path:
    """Create the folder ``path`` (and its parents); a :class:`UserError` naming ``what`` and the
    reason where it cannot be created or written to."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path}: a file is in the way (a folder is needed there)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{what} {path}: a part of the path is a file, not a folder") from None
    except OSError as exc:
        raise UserError(f"{what} {path}: cannot create the folder ({exc.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only(path) else "no permission to write"
        raise UserError(f"{what} {path}: cannot write there ({reason})")
    return path


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "another process"


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (which must exist) while the block runs."""
    path = Path(folder) / LOCK
    if fcntl is None:
        yield path
        return
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"{path}: cannot create the lock file ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(
                f"{folder} is in use by another run ({_holder(path)}); wait for it to end or "
                "use another --out"
            ) from None
        try:  # the holder before us may have removed the file between our open and our lock
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        command = " ".join(sys.argv) or "python"
        text = f"pid {os.getpid()} on {socket.gethostname()}: {command}\n"
        os.ftruncate(fd, 0)
        os.write(fd, text.encode(errors="replace"))
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # still ours: a newcomer that opened it will retry on a new file
        os.close(fd)


@contextlib.contextmanager
def run_folder(out: str | os.PathLike, what: str = "--out") -> Iterator[Path]:
    """Create the run folder ``out``, lock it for this process and clean the temporaries a killed
    writer left in it; yield it."""
    folder = make_folder(out, what)
    with run_lock(folder):
        clean_stale_temporaries(folder)
        yield folder
