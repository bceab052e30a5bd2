"""The one way a small file (a sidecar, a key) reaches the disk durably.

``atomic_write`` is tmp → write → fsync → rename → fsync(dir); the temporary file is removed
on error. When it returns, the new content is on stable storage under its final name and a
crash at any moment leaves either the old content or the new one, never a mix.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def fsync_file(path: str | os.PathLike) -> None:
    """fsync a file by path (its data and size durable when it returns)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the entries of directory ``path`` (creations, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: str | os.PathLike) -> None:
    """Flush every dirty page and inode of the filesystem holding ``path`` (one syscall
    instead of one fsync per file; what a group commit uses for a batch)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def temp_name_for(path: str) -> str:
    """The temporary name ``atomic_write`` uses for ``path``: a hidden sibling, so that
    recovery can find and remove a leftover one without a directory scan."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.tmp")


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_all_at(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def writev_all(fd: int, chunks) -> None:
    """Write a list of buffers in order, with as few writev calls as the kernel allows."""
    views = [memoryview(c).cast("B") for c in chunks if len(c)]
    while views:
        batch = views[:1024]  # IOV_MAX
        written = os.writev(fd, batch)
        while batch and written >= len(batch[0]):
            written -= len(batch[0])
            batch.pop(0)
            views.pop(0)
        if written:
            views[0] = views[0][written:]


def atomic_write(path: str, data: bytes, mode: int = 0o644, *, sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically and durably (see module docstring).

    Raises OSError (ENOSPC, EACCES, ...) with nothing left behind but the old file.
    """
    tmp = temp_name_for(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise
    if sync_dir:
        fsync_dir(os.path.dirname(path) or ".")


def makedirs_durable(path: str, stop_at: str) -> list[str]:
    """Create ``path`` and missing parents below ``stop_at``; fsync each parent whose entries
    changed, so a new directory survives a crash. Returns the directories created."""
    created = []
    missing = []
    cur = os.path.abspath(path)
    stop = os.path.abspath(stop_at)
    while cur != stop and not os.path.isdir(cur):
        missing.append(cur)
        cur = os.path.dirname(cur)
    for d in reversed(missing):
        try:
            os.mkdir(d)
            created.append(d)
        except FileExistsError:
            continue
    for d in created:
        fsync_dir(os.path.dirname(d))
    return created


def unlink_quietly(path: str) -> None:
    """Remove ``path`` if it exists: for cleaning up a temporary file (while another
    exception propagates, or one that was never committed)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
