"""Files in the output folder, safe with several writers at once: two commands, a training
callback's background render beside a manual one, local shards or a Ray driver.

- Every file is written under a hidden partial name unique to its writer (process id and a
  random token), then renamed into place: the final name only ever holds a complete file, and
  two writers never share a partial file.
- A milestone being rendered is locked (:class:`MilestoneLocks`) with an advisory ``flock`` that
  the kernel releases when its holder dies, however it dies: a second render skips it instead of
  writing it twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import socket
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

PARTIAL = ".partial"
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def partial_path(path: Path, pid: int | None = None) -> Path:
    """The hidden name ``path`` is written under until it is complete:
    ``.<name>.<host>-<pid>-<token>.partial``, unique to this writer (on a shared filesystem too)."""
    return path.with_name(f".{path.name}.{_HOST}-{os.getpid() if pid is None else pid}-{secrets.token_hex(4)}"
                          f"{PARTIAL}")


def remove_partials(folder: Path, pid: int) -> list[Path]:
    """Delete the partial files process ``pid`` of this machine left in ``folder`` (it was killed
    before it could); -> the files removed."""
    removed = []
    for p in Path(folder).glob(f".*.{_HOST}-{pid}-*{PARTIAL}"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed


def remove_dead_writers_partials(folder: Path) -> list[Path]:
    """Delete the partial files in ``folder`` of this machine's processes that are gone (a render
    killed with SIGKILL, or a crashed machine's): they can never be finished. Other machines'
    files are left alone: their process ids mean nothing here."""
    pattern = re.compile(rf"\.{re.escape(_HOST)}-(\d+)-[0-9a-f]+{re.escape(PARTIAL)}$")
    removed = []
    for p in Path(folder).glob(f".*{PARTIAL}"):
        m = pattern.search(p.name)
        if m and not _alive(int(m.group(1))):
            removed += remove_partials(folder, int(m.group(1)))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a partial file: never half-written, and a failed write
    (a full disk) leaves nothing behind."""
    tmp = partial_path(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class MilestoneLocks:
    """Locks on milestones' videos in one output folder, held until :meth:`release` (or this
    process's death).

    A lock is ``.<video name>.lock`` beside the video, ``flock``-ed and holding its owner's
    process id; it is deleted on release. A holder checks, once it has the lock, that the file
    is still the one at that name (a releaser may have deleted it in between) and tries again
    if not."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._held: dict[str, int] = {}  # video name -> open file descriptor

    def lock_path(self, name: str) -> Path:
        return self.folder / f".{name}.lock"

    def try_acquire(self, name: str) -> int | None:
        """Lock the video ``name``; -> None once held, or the process id of the live process that
        holds it (0 if it could not be read)."""
        if name in self._held:
            return None
        path = self.lock_path(name)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                return holder
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._held[name] = fd
                return None
            os.close(fd)  # released and deleted while we waited for it: lock the new file

    def acquire_all(self, names: Iterable[str]) -> dict[str, int]:
        """Lock every free name; -> the busy ones, name -> holder's process id."""
        busy = {}
        for name in names:
            holder = self.try_acquire(name)
            if holder is not None:
                busy[name] = holder
        return busy

    def release(self) -> None:
        """Unlock (and delete) every lock this object holds."""
        for name, fd in self._held.items():
            with contextlib.suppress(FileNotFoundError):
                self.lock_path(name).unlink()
            os.close(fd)  # closing the last descriptor releases the flock
        self._held.clear()

    def __enter__(self) -> MilestoneLocks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return 0


__all__ = ["MilestoneLocks", "partial_path", "remove_dead_writers_partials", "remove_partials", "write_atomic"]
