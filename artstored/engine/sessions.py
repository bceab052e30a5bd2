"""Upload sessions: the native API's resumable upload of one large file.

A session is a record in the ``sessions`` database (session id → who, the file's announced
size and fields, how many bytes are durably received) and a file
``<disk root>/sessions/<id>/data`` on the data disk with the most room when it was made. Bytes are appended at the received offset only; whatever
part of an append reached the disk is flushed and counted when the append ends, even when
the connection dropped in the middle, so a client resumes from ``received``, never from
zero. ``complete`` then makes one ordinary file of it through the normal upload path
(hashed, checked against a declared SHA-256, committed by the group commit); ``abort`` and
``expire`` forget a session and its bytes.

A crash between a write and the record's update leaves the data file longer than
``received``: the next append truncates it back, so what a client is told is always what is
on disk and flushed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
import time

from . import durable
from . import lmdb_schema as S
from . import modes as M
from . import wal as W
from .errors import ArtStoreError, Conflict, NotFound, UploadTooLarge, storage_error

DIRECTORY = "sessions"


class OffsetMismatch(Conflict):
    """An append that does not start where the received bytes end."""
    code = "offset_mismatch"


class SessionIncomplete(Conflict):
    code = "session_incomplete"


class SessionBusy(ArtStoreError):
    """Another append to the session is still running (a client retrying too early)."""
    code = "session_busy"
    status = 409
    title = "Upload session busy"


def _no_session(session_id: str) -> NotFound:
    return NotFound(f"no upload session {str(session_id)[:80]!r}", code="session_not_found")


class Append:
    """Bytes appended to a session from one thread at a time; ``close`` flushes and counts
    them (call it whether the transfer ended well or not), ``received`` says how many the
    session now holds durably."""

    def __init__(self, sessions: "UploadSessions", record: dict, offset: int):
        self.sessions, self.record, self.offset = sessions, record, offset
        self.limit = record["size"] - offset
        path = os.path.join(record["dir"], "data")
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.ftruncate(self._fd, offset)     # drop bytes written but never counted
        os.lseek(self._fd, offset, os.SEEK_SET)
        self.written = 0
        # close() may come from another thread while a write runs: it waits for it.
        self._io = threading.Lock()

    def write_many(self, chunks) -> None:
        n = sum(len(c) for c in chunks)
        with self._io:
            if self._fd is None:
                raise ValueError("append already closed")
            if self.written + n > self.limit:
                raise UploadTooLarge(f"the session announced {self.record['size']} bytes; "
                                     "this append goes past them", limit=self.record["size"])
            try:
                durable.writev_all(self._fd, chunks)
            except OSError as exc:
                raise storage_error(exc) from exc
            self.written += n

    def close(self) -> int:
        """Flush what was written, record it, release the session; returns the session's
        durable byte count. Idempotent."""
        with self._io:
            if self._fd is None:
                return self.record["received"]
            fd, self._fd = self._fd, None
        try:
            try:
                os.fdatasync(fd)
            except OSError as exc:
                raise storage_error(exc) from exc
            finally:
                os.close(fd)
            self.record["received"] = self.offset + self.written
            self.record["updated_at"] = time.time()
            self.sessions._put(self.record)
        finally:
            self.sessions._release(self.record["session_id"])
        return self.record["received"]


class UploadSessions:
    """Thread-safe; every method that changes something is durable when it returns."""

    def __init__(self, store):
        self.store = store
        self.env = store.env
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    def _db(self):
        return self.env.db(S.DB_SESSIONS)

    def _put(self, record: dict) -> None:
        with self.env.write() as txn:
            txn.put(record["session_id"].encode(), W.pack(record), db=self._db())

    def _release(self, session_id: str) -> None:
        with self._lock:
            self._busy.discard(session_id)

    def get(self, session_id: str, owner: str | None = None) -> dict:
        """The session's record; NotFound ``session_not_found`` if there is none (or it
        belongs to another account than ``owner``)."""
        if not isinstance(session_id, str) or not session_id.isalnum() or \
                len(session_id) > 64:
            raise _no_session(session_id)
        with self.env.read() as txn:
            raw = txn.get(session_id.encode(), db=self._db())
        record = None if raw is None else W.unpack(raw)
        if record is None or (owner is not None and record["actor"]["id"] != owner):
            raise _no_session(session_id)
        return record

    def create(self, size: int, fields: dict, actor: W.Actor) -> dict:
        """A new session for a file of ``size`` bytes; ``fields`` are the UploadRequest's
        (checked again at completion). ModeNotAllowed, UploadTooLarge."""
        self.store.require(M.UPLOAD)
        if size > self.store.config.max_upload_bytes:
            raise UploadTooLarge(f"a file of {size} bytes exceeds the limit of "
                                 f"{self.store.config.max_upload_bytes}",
                                 limit=self.store.config.max_upload_bytes)
        session_id = secrets.token_hex(16)
        disk, _ = self.store.disks.choose(size)
        root = os.path.join(disk.root, DIRECTORY)
        try:
            os.makedirs(os.path.join(root, session_id), mode=0o700)
            durable.fsync_dir(root)
        except OSError as exc:
            raise storage_error(exc) from exc
        now = time.time()
        record = {"session_id": session_id, "size": size, "received": 0, "fields": fields,
                  "dir": os.path.join(root, session_id),
                  "actor": {"id": actor.id, "name": actor.name, "role": actor.role},
                  "created_at": now, "updated_at": now}
        self._put(record)
        return record

    def append(self, session_id: str, offset: int, owner: str,
               length: int | None = None) -> Append:
        """Start appending at ``offset`` (``length`` bytes, when known); OffsetMismatch
        unless it is the received count, UploadTooLarge if ``length`` goes past the
        announced size, SessionBusy while another append runs. The caller must ``close``
        the Append."""
        self.store.require(M.UPLOAD)
        record = self.get(session_id, owner)
        if length is not None and offset + length > record["size"]:
            raise UploadTooLarge(f"the session announced {record['size']} bytes; "
                                 f"{offset + length} were sent", limit=record["size"])
        with self._lock:
            if session_id in self._busy:
                raise SessionBusy("another transfer to this session is still running; ask "
                                  "for its state and retry")
            if offset != record["received"]:
                raise OffsetMismatch(f"this session holds {record['received']} bytes: send "
                                     f"from offset {record['received']}",
                                     received=record["received"])
            self._busy.add(session_id)
        try:
            return Append(self, record, offset)
        except BaseException:
            self._release(session_id)
            raise

    def complete(self, session_id: str, owner: str, build_request):
        """Make the file: ``build_request(fields)`` gives its UploadRequest. Returns the
        PreparedUpload committed (resolved) — its attr and WAL sequence; the session is
        then gone. SessionIncomplete until every announced byte is received; what an
        upload raises (ChecksumMismatch, StorageFull, ...), the session kept."""
        record = self.get(session_id, owner)
        if record["received"] != record["size"]:
            raise SessionIncomplete(f"{record['received']} of {record['size']} bytes "
                                    "received", received=record["received"])
        with self._lock:
            if session_id in self._busy:
                raise SessionBusy("a transfer to this session is still running")
            self._busy.add(session_id)
        try:
            writer = self.store.begin_upload(record["size"])
            try:
                with open(os.path.join(record["dir"], "data"), "rb") as f:
                    while chunk := f.read(4 << 20):
                        writer.write(chunk)
                writer.finish()
                prepared = self.store.prepare_upload(
                    writer, build_request(record["fields"]),
                    W.Actor(**record["actor"]))
            except BaseException:
                writer.abort()
                raise
            attr = self.store.commit_upload(prepared).result()
            self._forget(record)
        finally:
            self._release(session_id)
        return prepared, attr

    def abort(self, session_id: str, owner: str | None = None) -> None:
        """Forget the session and its bytes; NotFound; SessionBusy during a transfer."""
        record = self.get(session_id, owner)
        with self._lock:
            if session_id in self._busy:
                raise SessionBusy("a transfer to this session is still running")
            self._busy.add(session_id)
        try:
            self._forget(record)
        finally:
            self._release(session_id)

    def _forget(self, record: dict) -> None:
        with self.env.write() as txn:
            txn.delete(record["session_id"].encode(), db=self._db())
        shutil.rmtree(record["dir"], ignore_errors=True)

    def expire(self, idle_seconds: float, now: float | None = None) -> int:
        """Forget every session untouched for ``idle_seconds``; how many."""
        now = time.time() if now is None else now
        with self.env.read() as txn:
            records = [W.unpack(v) for _, v in txn.cursor(db=self._db())]
        gone = 0
        for record in records:
            if now - record["updated_at"] > idle_seconds:
                with self._lock:
                    if record["session_id"] in self._busy:
                        continue
                    self._busy.add(record["session_id"])
                try:
                    self._forget(record)
                    gone += 1
                finally:
                    self._release(record["session_id"])
        return gone
