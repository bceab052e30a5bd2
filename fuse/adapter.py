"""pyfuse3 operations over the ArchiveModel: inode numbers in, FUSEErrors out.

Everything that changes the tree or a file is EROFS (the mount is also made with ``ro``,
so the kernel refuses most writes before they get here). Content is immutable, so open
files keep the kernel's page cache (``keep_cache``) and reads are plain ``pread``s on a file
descriptor opened once per handle: no LMDB lookup on the read path. What is in the page
cache is read at once (``RWF_NOWAIT``: never waits for the disk); model calls that touch
LMDB or the disk, and reads that would wait, run in worker threads, so one slow request
does not stall the others.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os

import pyfuse3
import trio

from .model import DIR, FILE, TEXT, ArchiveModel, FsError, Node, Stat

log = logging.getLogger("artstored.fuse")

DIR_TIMEOUT = 1.0       # new and deleted files show within a second or two
FILE_ATTR_TIMEOUT = 60.0  # content never changes
XATTR_PREFIX = b"user.artstore."
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def fs_errors(fn):
    """Every FsError/OSError of a handler becomes a FUSEError with the same errno."""
    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except FsError as exc:
            args[0].counters.errors += 1
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:
            args[0].counters.errors += 1
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            args[0].counters.errors += 1
            log.exception("%s failed", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper


def read_only(fn):
    @functools.wraps(fn)
    async def refuse(*args, **kwargs):
        raise pyfuse3.FUSEError(errno.EROFS)
    return refuse


PREFETCH_BYTES = 8 << 20


def _read_ahead_pread(fd: int, size: int, off: int) -> bytes:
    """pread, and for large reads ask the kernel to fetch the next 8 MiB of the underlying
    file meanwhile: a cold sequential read then keeps the disk busy between requests."""
    if size >= 128 * 1024:
        os.posix_fadvise(fd, off + size, PREFETCH_BYTES, os.POSIX_FADV_WILLNEED)
    return os.pread(fd, size, off)


def _cached_pread(fd: int, size: int, off: int) -> bytes:
    """What of ``[off, off + size)`` is in the page cache, read without waiting for the
    disk (``RWF_NOWAIT``): all of it for a warm file, a prefix, or nothing. A read that
    would block costs no thread hop this way, and one that would not never waits."""
    buf = bytearray(size)
    try:
        n = os.preadv(fd, [buf], off, os.RWF_NOWAIT)
    except (BlockingIOError, OSError):
        return b""        # not cached (or RWF_NOWAIT unsupported here): the thread reads
    return bytes(memoryview(buf)[:n])


class Counters:
    """Operations, bytes and errors, for the mount's metrics."""

    def __init__(self):
        self.ops: dict[str, int] = {}
        self.bytes_read = 0
        self.errors = 0


class ArchiveFS(pyfuse3.Operations):
    supports_dot_lookup = False

    def __init__(self, model: ArchiveModel, *, threads: int = 16):
        super().__init__()
        self.model = model
        self.uid, self.gid = os.getuid(), os.getgid()
        self._handles = itertools.count(1)
        self._files: dict[int, int | bytes] = {}          # fh -> fd, or bytes of a text
        self._dirs: dict[int, tuple[int, list | None]] = {}  # fh -> (ino, listing)
        self._limiter = trio.CapacityLimiter(threads)
        self.counters = Counters()

    async def _in_thread(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _attributes(self, node: Node, st: Stat | None = None) -> pyfuse3.EntryAttributes:
        st = st or self.model.stat(node)
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = st.ino
        attr.st_mode = st.mode
        attr.st_nlink = st.nlink
        attr.st_size = st.size
        attr.st_uid = self.uid
        attr.st_gid = self.gid
        attr.st_blksize = 1 << 20
        attr.st_blocks = (st.size + 511) // 512
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = st.mtime_ns
        attr.generation = 0
        if node.kind == FILE:
            attr.attr_timeout = FILE_ATTR_TIMEOUT
            attr.entry_timeout = DIR_TIMEOUT
        else:
            attr.attr_timeout = attr.entry_timeout = DIR_TIMEOUT
        return attr

    def _count(self, name: str) -> None:
        self.counters.ops[name] = self.counters.ops.get(name, 0) + 1

    # --- reading the tree ---------------------------------------------------------------

    @fs_errors
    async def lookup(self, parent_inode, name, ctx=None):
        self._count("lookup")
        name = os.fsdecode(name)
        # One trip to a worker thread, not two: a lookup precedes every open.
        return await self._in_thread(lambda: self._attributes(
            self.model.lookup(parent_inode, name)))

    @fs_errors
    async def getattr(self, inode, ctx=None):
        self._count("getattr")
        return await self._in_thread(self._attributes, self.model.node(inode))

    @fs_errors
    async def opendir(self, inode, ctx):
        self._count("opendir")
        if self.model.node(inode).kind != DIR:
            raise FsError(errno.ENOTDIR)
        fh = next(self._handles)
        self._dirs[fh] = (inode, None)
        return fh

    @fs_errors
    async def readdir(self, fh, start_id, token):
        self._count("readdir")
        inode, listing = self._dirs[fh]
        if listing is None:
            # The whole listing once per open: later calls continue from the same snapshot,
            # so entries added meanwhile are neither skipped nor repeated.
            def build():
                return [(os.fsencode(name), self._attributes(node, st))
                        for name, node, st in self.model.readdir_plus(inode)]
            listing = await self._in_thread(build)
            self._dirs[fh] = (inode, listing)
        for i in range(start_id, len(listing)):
            name, attr = listing[i]
            if not pyfuse3.readdir_reply(token, name, attr, i + 1):
                break

    async def releasedir(self, fh):
        self._dirs.pop(fh, None)

    async def forget(self, inode_list):
        for inode, _ in inode_list:
            self.model.forget(inode)

    # --- reading files --------------------------------------------------------------------

    @fs_errors
    async def open(self, inode, flags, ctx):
        self._count("open")
        if flags & WRITE_FLAGS:
            raise FsError(errno.EROFS)
        node = self.model.node(inode)
        fh = next(self._handles)
        if node.kind == TEXT:
            self._files[fh] = self.model.text(node)
            return pyfuse3.FileInfo(fh=fh, keep_cache=True)
        if node.kind != FILE:
            raise FsError(errno.EISDIR)
        self._files[fh] = await self._in_thread(self.model.open_content, node)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @fs_errors
    async def read(self, fh, off, size):
        self._count("read")
        handle = self._files[fh]
        if isinstance(handle, bytes):
            return handle[off:off + size]
        data = _cached_pread(handle, size, off)
        if len(data) < size:
            # Not (all) in the page cache: the rest from a worker thread, which may wait
            # for the disk (an empty answer there is the end of the file).
            data += await self._in_thread(_read_ahead_pread, handle, size - len(data),
                                          off + len(data))
        self.counters.bytes_read += len(data)
        return data

    async def release(self, fh):
        handle = self._files.pop(fh, None)
        if isinstance(handle, int):
            os.close(handle)

    @fs_errors
    async def statfs(self, ctx):
        info = await self._in_thread(self.model.statfs)
        st = pyfuse3.StatvfsData()
        st.f_bsize = st.f_frsize = 4096
        st.f_blocks = info["total"] // 4096
        st.f_bfree = st.f_bavail = info["free"] // 4096
        st.f_files = info["files"]
        st.f_ffree = st.f_favail = 0
        st.f_namemax = 255
        return st

    @fs_errors
    async def getxattr(self, inode, name, ctx):
        self._count("getxattr")
        if not name.startswith(b"user."):
            # No ACLs or security labels here. EOPNOTSUPP (not ENODATA) lets tools such as
            # ls -l learn that once per filesystem instead of asking for every file.
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        if not name.startswith(XATTR_PREFIX):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        values = await self._in_thread(self.model.xattrs, self.model.node(inode))
        try:
            return values[os.fsdecode(name)]
        except KeyError:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None

    @fs_errors
    async def listxattr(self, inode, ctx):
        values = await self._in_thread(self.model.xattrs, self.model.node(inode))
        return [os.fsencode(k) for k in values]

    @fs_errors
    async def access(self, inode, mode, ctx):
        if mode & os.W_OK:
            raise FsError(errno.EROFS)

    # --- everything that would change something -----------------------------------------------

    @read_only
    async def setattr(self, *args, **kwargs): ...

    @read_only
    async def mknod(self, *args, **kwargs): ...

    @read_only
    async def mkdir(self, *args, **kwargs): ...

    @read_only
    async def unlink(self, *args, **kwargs): ...

    @read_only
    async def rmdir(self, *args, **kwargs): ...

    @read_only
    async def symlink(self, *args, **kwargs): ...

    @read_only
    async def rename(self, *args, **kwargs): ...

    @read_only
    async def link(self, *args, **kwargs): ...

    @read_only
    async def create(self, *args, **kwargs): ...

    @read_only
    async def write(self, *args, **kwargs): ...

    @read_only
    async def setxattr(self, *args, **kwargs): ...

    @read_only
    async def removexattr(self, *args, **kwargs): ...
