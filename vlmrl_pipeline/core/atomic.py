"""Write-then-rename helpers: a reader sees the old artifact or the new one, never a half-written one; and one
writer per artifact folder (:func:`exclusive`), which also clears what killed writers left behind."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is renamed onto ``path``, on failure removed."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=final.suffix, dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp folder beside ``path``; on success it replaces ``path`` whole, on failure it is removed."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_dir(tmp, final)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move a finished folder into place; a previous version is moved aside first and removed last."""
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=dst.parent))
        os.replace(dst, old / dst.name)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


class ArtifactBusyError(RuntimeError):
    """Another live process is writing the same artifact folder."""


LOCK_SUFFIX = ".lock"
_held: dict[str, int] = {}
"""Locks this process holds (lock path -> owning thread id): the same thread may take its own lock again, as the
``lora_adapter`` asset does around its whole body and then ``staging`` does around the write."""
_held_guard = threading.Lock()


def lock_path(path: str | os.PathLike) -> Path:
    final = Path(path)
    return final.parent / f".{final.name}{LOCK_SUFFIX}"


@contextmanager
def exclusive(path: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of artifact folder ``path`` (``.<name>.lock`` beside it) or fail at once.

    One writer per artifact folder: a second materialization of the same asset on the same data folder raises
    :class:`ArtifactBusyError` naming the holder (pid, host, since when) instead of sharing staging and checkpoint
    files with it. The lock is the kernel's ``flock`` on that file, so a holder that is killed (SIGKILL, OOM) releases
    it with its death and a stale lock file never blocks anyone; the file itself stays (deleting a lock file others
    may have open would let two holders in). Its content is the holder's identity, for the message only.
    """
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    key = str(lock.resolve())
    me = threading.get_ident()
    with _held_guard:
        owner = _held.get(key)
        if owner == me:
            reentrant = True
        elif owner is not None:
            raise ArtifactBusyError(f"{Path(path).name} is already being written by another thread of this process "
                                    f"(pid {os.getpid()}); lock {lock}")
        else:
            reentrant = False
    if reentrant:
        yield
        return
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(lock)
            raise ArtifactBusyError(
                f"{Path(path).name} is being written by another materialization ({holder}; lock file {lock}); "
                "wait for that run to finish (or stop it) and materialize again") from None
        from vlmrl_pipeline.core.processes import process_identity

        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({**process_identity(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode(), 0)
        with _held_guard:
            _held[key] = me
        try:
            yield
        finally:
            with _held_guard:
                _held.pop(key, None)
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_holder(lock: Path) -> str:
    try:
        holder = json.loads(lock.read_text())
        return f"pid {holder['pid']} on {holder['host']} since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def remove_dead_staging(path: str | os.PathLike) -> list[Path]:
    """Remove the staging folders (``.<name>.*``, from :func:`atomic_dir`) that killed writers left beside ``path``.

    Call it only while holding :func:`exclusive` on ``path``: then no live writer owns any of them. Returns what
    was removed.
    """
    final = Path(path)
    if not final.parent.is_dir():
        return []
    if not final.exists():
        # Killed between _replace_dir's two renames: the previous artifact waits in ".<name>.old.*/<name>";
        # put it back rather than delete it with the rest.
        for aside in sorted(final.parent.glob(f".{final.name}.old.*/{final.name}")):
            os.replace(aside, final)
            break
    removed = []
    for entry in final.parent.iterdir():
        if entry.name.startswith(f".{final.name}.") and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
