"""Streaming one upload's bytes into ``tmp/`` on a disk, hashing them as they stream.

An ``UploadWriter`` never holds more than the chunk it is given. The size limit and the
disk's reserve are enforced on every chunk, so an oversized or disk-filling upload fails as
soon as it crosses the line, not after the whole body has arrived.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid

import xxhash

from . import durable
from .disks import Disk, DiskSet
from .errors import StorageFull, UploadTooLarge


class UploadWriter:
    """One upload in flight. Feed it from one thread at a time (a worker thread, since every
    call may block on the disk); ``abort`` may come from any thread and waits for a write in
    progress, so a closed descriptor is never written to.

    ``write`` raises UploadTooLarge past ``max_bytes``, StorageFull when the disk's reserve
    would be crossed (or the disk reports ENOSPC), OSError for other I/O failures. After any
    exception the caller must call ``abort``. ``finish`` makes the bytes durable (fdatasync)
    and returns the digests; the file stays in ``tmp/`` until the group commit moves it.
    """

    def __init__(self, disks: DiskSet, disk: Disk, allowance: int, max_bytes: int):
        self.upload_id = uuid.uuid4().hex
        self.disks = disks
        self.disk = disk
        self.max_bytes = max_bytes
        self.allowance = allowance
        self.tmp_path = os.path.join(disk.tmp, f"{self.upload_id}.part")
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._xxh3 = xxhash.xxh3_128()
        self._fd: int | None = os.open(
            self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self.sha256_hex: str | None = None
        self.xxh3_hex: str | None = None
        self._lock = threading.Lock()

    def write_many(self, chunks) -> None:
        """``write`` each chunk in order (one worker-thread hop for a batch)."""
        with self._lock:
            if self._fd is None:
                raise ValueError("upload already finished or aborted")
            for chunk in chunks:
                self._write(chunk)

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        with self._lock:
            if self._fd is None:
                raise ValueError("upload already finished or aborted")
            self._write(chunk)

    def _write(self, chunk: bytes | bytearray | memoryview) -> None:
        n = len(chunk)
        if self.size + n > self.max_bytes:
            raise UploadTooLarge(f"upload exceeds the limit of {self.max_bytes} bytes",
                                 limit=self.max_bytes)
        if self.size + n > self.allowance:
            # Others may have freed space since we started; look again before refusing.
            self.allowance = self.size + self.disks.usable(self.disk)
            if self.size + n > self.allowance:
                raise StorageFull("the disk's reserve would be crossed by this upload")
        self._sha256.update(chunk)
        self._xxh3.update(chunk)
        try:
            durable.write_all(self._fd, chunk)
        except OSError as exc:
            if exc.errno in (28, 122):  # ENOSPC, EDQUOT
                raise StorageFull("the disk is full") from exc
            raise
        self.size += n

    def finish(self) -> None:
        """Flush the content to stable storage and close; sets the digests."""
        with self._lock:
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                if exc.errno in (28, 122):
                    raise StorageFull("the disk is full") from exc
                raise
            finally:
                os.close(self._fd)
                self._fd = None
        self.sha256_hex = self._sha256.hexdigest()
        self.xxh3_hex = self._xxh3.hexdigest()

    def abort(self) -> None:
        """Close and remove the temporary file. Idempotent; never raises for a file that is
        already gone."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
