"""Where a command is about to write: checked before any work, created with a one-line error.

A search, an export or a supernet that trains for minutes and then fails to create its folder has wasted the
minutes, and Python's ``OSError`` names neither the option nor why. :func:`check_creatable` says, without
touching the disk, whether a folder can be made where the user asked: every missing part is created under the
nearest folder that exists, which must be a folder (not a file), writable, on a filesystem that takes files (not
read-only, not one of the kernel's pseudo-filesystems such as ``/proc`` or ``/sys``, where ``mkdir`` fails or
means something else). :func:`make_dirs` creates it and turns whatever the system still refuses (a race, a full
disk) into the same one line.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from metanet.errors import ConfigError, MetanetError

# Filesystems the kernel synthesises: nothing a user keeps can be written there.
PSEUDO_FILESYSTEMS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "pstore",
    "bpf", "configfs", "fusectl", "mqueue", "hugetlbfs", "efivarfs", "binfmt_misc", "autofs", "selinuxfs",
    "rpc_pipefs", "nsfs"})


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash in mount points as octal escapes
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def filesystem_type(path: str | os.PathLike) -> str | None:
    """The type of the filesystem ``path`` (an existing path) is on, from ``/proc/self/mountinfo``; None where
    the system does not say (not Linux)."""
    target = os.path.realpath(path)
    best, kind = "", None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                left, sep, right = line.partition(" - ")
                fields = left.split()
                if not sep or len(fields) < 5 or not right.split():
                    continue
                mount = _unescape(fields[4])
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, right.split()[0]
    except OSError:
        return None
    return kind


def _nearest_existing(path: Path) -> Path:
    probe = path
    while not (probe.exists() or probe.is_symlink()) and probe != probe.parent:
        probe = probe.parent
    return probe


def why_not_creatable(path: str | os.PathLike) -> str | None:
    """Why a folder cannot be created (or written into, when it exists) at ``path``; None when it can."""
    path = Path(os.path.abspath(path))
    probe = _nearest_existing(path)
    if probe.is_symlink() and not probe.exists():
        return f"{probe} is a broken symbolic link (to {os.readlink(probe)})"
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    kind = filesystem_type(probe)
    if kind in PSEUDO_FILESYSTEMS:
        return f"{probe} is on {kind}, a filesystem the kernel makes up; give a folder on a disk"
    if not os.access(probe, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        return f"{probe} is on a read-only filesystem" if read_only else f"{probe} is not writable (permission denied)"
    return None


def check_creatable(path: str | os.PathLike, what: str, error: type[MetanetError] = ConfigError,
                    shown: str | os.PathLike | None = None) -> None:
    """Refuse, in one line naming ``what`` (the option) and the path (``shown``, when what is written is
    made in ``path``, its folder), a folder that cannot be made there."""
    reason = why_not_creatable(path)
    if reason is not None:
        raise error(f"{what}: cannot write {shown if shown is not None else path}: {reason}")


def make_dirs(path: str | os.PathLike, what: str, error: type[MetanetError] = ConfigError) -> Path:
    """``mkdir -p path``, failing in one line naming ``what`` and the reason."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = why_not_creatable(path) or describe_os_error(exc)
        raise error(f"{what}: cannot write {path}: {reason}") from None
    return path


def describe_os_error(exc: OSError) -> str:
    """An OSError as a user reads it: ``No space left on device (ENOSPC)`` with the file it names."""
    code = errno.errorcode.get(exc.errno, "") if exc.errno else ""
    text = exc.strerror or str(exc)
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    return f"{text}{where}" + (f" [{code}]" if code else "")


__all__ = ["check_creatable", "make_dirs", "why_not_creatable", "filesystem_type", "describe_os_error",
           "PSEUDO_FILESYSTEMS"]
