"""Streaming one upload's bytes into ``tmp/`` on a disk, hashing them as they stream.

An ``UploadWriter`` holds no more than the chunk it is given (one that writes around the
page cache, at most one DIRECT_BLOCK besides). The size limit and the
disk's reserve are enforced on every chunk, so an oversized or disk-filling upload fails as
soon as it crosses the line, not after the whole body has arrived. Space is claimed from the
DiskSet ahead of the bytes (in slabs, so a streaming upload asks rarely) and given back as
they land on the disk, so uploads running side by side share the room there is.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import xxhash

from . import durable
from .disks import Disk, DiskSet
from .errors import StorageFull, UploadTooLarge, storage_error

# A streaming upload claims disk space this much at a time (or what one write needs).
CLAIM_SLAB = 64 << 20

# Files at least this large are fdatasync'd by their uploader; smaller ones by the batch.
SYNC_OWN_BYTES = 1 << 20

# Uploads announced at least this large bypass the page cache (O_DIRECT, in aligned blocks
# of DIRECT_BLOCK through one buffer). Their dirty pages would otherwise be flushed by
# every group commit's syncfs, and by ext4's ordered-mode journal commits, so that a
# small upload beside a streaming 1 GiB one waited for the big one's data to reach the
# disk. The last part shorter than DIRECT_ALIGN goes through the page cache, where
# ``finish``'s fdatasync flushes it. A filesystem or device that refuses O_DIRECT (EINVAL,
# EOPNOTSUPP: tmpfs, a larger logical block) gets cached writes instead.
DIRECT_BYTES = 32 << 20
DIRECT_BLOCK = 512 << 10
DIRECT_ALIGN = 4096
_NO_DIRECT = (errno.EINVAL, errno.EOPNOTSUPP)

# SHA-256 (~1.5 GB/s a core) runs here while the uploader's own thread writes the same
# bytes: hashing and writing overlap instead of adding up. hashlib releases the GIL.
_HASHERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sha256")


def _update_all(h, chunks) -> None:
    for chunk in chunks:
        h.update(chunk)


class UploadWriter:
    """One upload in flight. Feed it from one thread at a time (a worker thread, since every
    call may block on the disk); ``abort`` may come from any thread and waits for a write in
    progress, so a closed descriptor is never written to.

    ``write`` raises UploadTooLarge past ``max_bytes``, StorageFull when the disk's reserve
    would be crossed (or the disk reports ENOSPC), OSError for other I/O failures. After any
    exception the caller must call ``abort``. ``finish`` closes the file and sets the
    digests; the group commit makes it durable and moves it out of ``tmp/``.
    """

    def __init__(self, disks: DiskSet, disk: Disk, max_bytes: int, *, direct: bool = False):
        self.upload_id = uuid.uuid4().hex
        self.disks = disks
        self.disk = disk
        self.max_bytes = max_bytes
        self._claimed = 0   # claimed from the DiskSet and not yet written
        self.tmp_path = os.path.join(disk.tmp, f"{self.upload_id}.part")
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._xxh3 = xxhash.xxh3_128()
        self._fd: int | None = os.open(
            self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self.sha256_hex: str | None = None
        self.xxh3_hex: str | None = None
        self.synced = False
        self._lock = threading.Lock()
        self._direct_fd: int | None = None
        if direct:
            self._open_direct()

    def _open_direct(self) -> None:
        try:
            self._direct_fd = os.open(self.tmp_path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
            self._block = mmap.mmap(-1, DIRECT_BLOCK)   # page-aligned, as O_DIRECT needs
        except OSError as exc:
            if self._direct_fd is not None:
                os.close(self._direct_fd)
                self._direct_fd = None
            if exc.errno in _NO_DIRECT:
                return                                  # cached writes, as for small files
            os.close(self._fd)
            self._fd = None
            os.unlink(self.tmp_path)
            raise storage_error(exc) from exc
        self._filled = 0          # bytes in _block not yet on the disk
        self._on_disk = 0         # bytes written through _direct_fd (a multiple of ALIGN)

    def write_many(self, chunks) -> None:
        """Write the chunks in order: the batch is checked against the limits first (so a
        refused batch writes nothing), then hashed with SHA-256 in another thread while this
        one feeds XXH3 and writes it: with one writev (no copy of the chunks), or around
        the page cache through the aligned block."""
        with self._lock:
            if self._fd is None:
                raise ValueError("upload already finished or aborted")
            n = sum(len(c) for c in chunks)
            self._check_room(n)
            hashing = _HASHERS.submit(_update_all, self._sha256, chunks) if n >= 65536 \
                else None
            held = self._held()
            try:
                if hashing is None:
                    _update_all(self._sha256, chunks)
                _update_all(self._xxh3, chunks)
                self._write_out(chunks)
            finally:
                if hashing is not None:
                    hashing.result()
            self.size += n
            # Written: those bytes now count in the filesystem's free space itself (what
            # waits in the aligned block stays claimed).
            landed = n + held - self._held()
            self._claimed -= landed
            self.disks.release(self.disk, landed)

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        self.write_many([chunk])

    def _check_room(self, n: int) -> None:
        if self.size + n > self.max_bytes:
            raise UploadTooLarge(f"upload exceeds the limit of {self.max_bytes} bytes",
                                 limit=self.max_bytes)
        if n > self._claimed:
            want = n - self._claimed
            slab = max(want, min(CLAIM_SLAB, self.max_bytes - self.size - self._claimed))
            if not self.disks.claim(self.disk, slab):
                if not self.disks.claim(self.disk, want):
                    raise StorageFull("the disk's reserve would be crossed by this upload "
                                      "(with the uploads in flight beside it)")
                slab = want
            self._claimed += slab

    def _held(self) -> int:
        return self._filled if self._direct_fd is not None else 0

    def _release_claim(self) -> None:
        self.disks.release(self.disk, self._claimed)
        self._claimed = 0

    def _write_out(self, chunks) -> None:
        try:
            if self._direct_fd is None:
                durable.writev_all(self._fd, chunks)
                return
            pending = [memoryview(c).cast("B") for c in chunks if len(c)]
            while pending:
                if self._direct_fd is None:     # the device refused O_DIRECT: cached
                    durable.writev_all(self._fd, pending)
                    return
                n = min(len(pending[0]), DIRECT_BLOCK - self._filled)
                self._block[self._filled:self._filled + n] = pending[0][:n]
                self._filled += n
                pending[0] = pending[0][n:]
                if not pending[0]:
                    pending.pop(0)
                if self._filled == DIRECT_BLOCK:
                    self._write_direct(DIRECT_BLOCK)
        except OSError as exc:
            raise storage_error(exc) from exc

    def _write_direct(self, n: int) -> None:
        """Write the first ``n`` (aligned) bytes of the block; keep the rest at its start.
        A device that refuses the first O_DIRECT write gets this upload through the page
        cache instead."""
        with memoryview(self._block) as whole:
            try:
                done = 0
                while done < n:
                    done += os.pwrite(self._direct_fd, whole[done:n], self._on_disk + done)
            except OSError as exc:
                if exc.errno not in _NO_DIRECT or self._on_disk or done:
                    raise
                durable.write_all_at(self._fd, whole[:self._filled], 0)
                os.lseek(self._fd, self._filled, os.SEEK_SET)
                self._filled = 0
                fallback = True
            else:
                fallback = False
        if fallback:
            self._close_direct()
            return
        self._on_disk += n
        rest = self._filled - n
        if rest:
            self._block.move(0, n, rest)
        self._filled = rest

    def _finish_direct(self) -> None:
        """The aligned part of what is buffered through O_DIRECT, the tail through the
        page cache (where ``finish``'s fdatasync flushes it with the file's size)."""
        aligned = self._filled - self._filled % DIRECT_ALIGN
        if aligned:
            self._write_direct(aligned)
        if self._filled:
            with memoryview(self._block) as whole:
                durable.write_all_at(self._fd, whole[:self._filled], self._on_disk)

    def _close_direct(self) -> None:
        """Close the O_DIRECT descriptor and let the block go; never raises for the block."""
        if self._direct_fd is not None:
            fd, self._direct_fd = self._direct_fd, None
            block, self._block = self._block, None
            try:
                block.close()
            except BufferError:
                pass    # a traceback still holds a view of it: freed with that traceback
            os.close(fd)

    def finish(self) -> None:
        """Close the file and set the digests. A file of SYNC_OWN_BYTES or more is flushed
        to stable storage here, by its own thread and in parallel with other uploads; a
        smaller one is left to the group commit's single flush of its batch."""
        with self._lock:
            try:
                if self._direct_fd is not None:
                    self._finish_direct()
                if self.size >= SYNC_OWN_BYTES:
                    os.fdatasync(self._fd)
                    self.synced = True
            except OSError as exc:
                raise storage_error(exc) from exc
            finally:
                self._release_claim()
                fd, self._fd = self._fd, None
                try:
                    self._close_direct()
                finally:
                    os.close(fd)
        self.sha256_hex = self._sha256.hexdigest()
        self.xxh3_hex = self._xxh3.hexdigest()

    def abort(self) -> None:
        """Close and remove the temporary file. Idempotent; never raises for a file that is
        already gone."""
        with self._lock:
            self._release_claim()
            fd, self._fd = self._fd, None
            try:
                self._close_direct()
            finally:
                if fd is not None:
                    os.close(fd)
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass

    def materialize(self) -> None:
        """Nothing to do: the bytes are already in tmp/ (see BufferedUpload)."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()


class BufferedUpload:
    """A small upload whose bytes are in memory: hashed at once, written to ``tmp/`` by the
    group commit (``materialize``) together with the rest of its batch, so the request
    path does no disk I/O at all (or by its submitter's own thread, when it has one). Same interface as UploadWriter after ``finish``.
    Raises UploadTooLarge or StorageFull on creation; its size stays claimed on the disk
    until ``materialize`` has written it (or ``abort``)."""

    synced = False

    def __init__(self, disks: DiskSet, disk: Disk, max_bytes: int, chunks):
        self.upload_id = uuid.uuid4().hex
        self.disks = disks
        self.disk = disk
        self.chunks = list(chunks)
        self.size = sum(len(c) for c in self.chunks)
        if self.size > max_bytes:
            raise UploadTooLarge(f"upload exceeds the limit of {max_bytes} bytes",
                                 limit=max_bytes)
        if not disks.claim(disk, self.size):
            raise StorageFull("the disk's reserve would be crossed by this upload "
                              "(with the uploads in flight beside it)")
        self._claimed = self.size
        sha, xxh = hashlib.sha256(), xxhash.xxh3_128()
        for chunk in self.chunks:
            sha.update(chunk)
            xxh.update(chunk)
        self.sha256_hex = sha.hexdigest()
        self.xxh3_hex = xxh.hexdigest()
        self.tmp_path = os.path.join(disk.tmp, f"{self.upload_id}.part")
        self._written = False

    def materialize(self) -> None:
        """Write the bytes to ``tmp_path`` (not synced: the batch's flush does that). Once:
        a second call does nothing (a caller with a thread to spare may write them before
        the group commit would)."""
        if self._written:
            return
        try:
            fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o644)
            try:
                for chunk in self.chunks:
                    durable.write_all(fd, chunk)
            finally:
                os.close(fd)
        except OSError as exc:
            self.abort()
            raise storage_error(exc) from exc
        self.chunks = []
        self._written = True
        self.disks.release(self.disk, self._claimed)
        self._claimed = 0

    def abort(self) -> None:
        self.chunks = []
        self.disks.release(self.disk, self._claimed)
        self._claimed = 0
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass
