"""Locks and atomic writes: what every writer of a run, a supernet or an export shares.

A file is replaced atomically (a temporary sibling, fsynced, renamed over it), so a reader or a killed writer
sees the old file or the new one; a writer holds an exclusive ``flock`` the kernel drops when it dies, so a
killed process never leaves a stale lock.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from metanet.errors import RunError


def _describe_holder(text: str) -> str:
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on {h['host']}, started {h['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (directories are fsynced through a read-only descriptor)."""
    try:
        _fsync(path)
    except OSError:  # some filesystems refuse fsync on directories; the rename is still atomic
        pass


def exclusive_lock(lock_path: Path, what: str, busy) -> int:
    """An exclusive ``flock`` on ``lock_path`` (the kernel drops it when the holder exits or dies, so a killed
    writer never leaves a stale lock), the holder's name written into the file; else a :class:`RunError`
    with ``busy(description of the holder)``. Returns the descriptor; closing it releases the lock."""
    import fcntl
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunError(f"{lock_path}: cannot open {what} ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace")
        os.close(fd)
        raise RunError(busy(_describe_holder(holder))) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
    return fd


def replace_atomically(path: Path, write) -> None:
    """Replace ``path`` with what ``write(tmp_path)`` writes, so that a reader (or a killed writer) sees the
    old file or the new one: a temporary sibling, fsynced, renamed over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (see :func:`replace_atomically`)."""
    replace_atomically(path, lambda tmp: tmp.write_text(text))
