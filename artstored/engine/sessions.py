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
from .errors import (ArtStoreError, Conflict, NotFound, StoreCorrupt, UploadTooLarge,
                     storage_error)

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
    session now holds durably. Made by ``UploadSessions.append`` (the session reserved)."""

    def __init__(self, sessions: "UploadSessions", record: dict, offset: int):
        self.sessions, self.record, self.offset = sessions, record, offset
        self.limit = record["size"] - offset
        self.written = 0
        # close() may come from another thread while a write runs: it waits for it.
        self._io = threading.Lock()
        self._fd = os.open(os.path.join(record["dir"], "data"), os.O_WRONLY | os.O_CLOEXEC)
        try:
            on_disk = os.fstat(self._fd).st_size
            if on_disk < offset:
                raise StoreCorrupt(f"session {record['session_id']} holds {on_disk} bytes, "
                                   f"its record {offset}")
            if on_disk > offset:
                os.ftruncate(self._fd, offset)   # written by a transfer, never counted
            os.lseek(self._fd, offset, os.SEEK_SET)
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise

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
    """Thread-safe; every method that changes something is durable when it returns. Every
    change of a session first reserves it (one at a time: SessionBusy otherwise) and reads
    its record again, so nothing acts on a record another change made stale."""

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
        belongs to another account than ``owner``). A completed session (kept until it
        expires, so a repeated ``complete`` gets the same file) names its ``file_id``."""
        if not isinstance(session_id, str) or not session_id.isalnum() or \
                len(session_id) > 64:
            raise _no_session(session_id)
        with self.env.read() as txn:
            raw = txn.get(session_id.encode(), db=self._db())
        record = None if raw is None else W.unpack(raw)
        if record is None or (owner is not None and record["actor"]["id"] != owner):
            raise _no_session(session_id)
        return record

    def _reserve(self, session_id: str, owner: str | None, what: str) -> dict:
        """Reserve the session and return its record as it is now (released on error)."""
        self.get(session_id, owner)          # NotFound before SessionBusy
        with self._lock:
            if session_id in self._busy:
                raise SessionBusy(f"another transfer or change of this session is still "
                                  f"running; ask for its state and retry the {what}")
            self._busy.add(session_id)
        try:
            return self.get(session_id, owner)
        except BaseException:
            self._release(session_id)
            raise

    def create(self, size: int, fields: dict, actor: W.Actor) -> dict:
        """A new session for a file of ``size`` bytes (its empty data file durable already);
        ``fields`` are the UploadRequest's (checked again at completion). ModeNotAllowed,
        UploadTooLarge, StorageFull."""
        self.store.require(M.UPLOAD)
        if size > self.store.config.max_upload_bytes:
            raise UploadTooLarge(f"a file of {size} bytes exceeds the limit of "
                                 f"{self.store.config.max_upload_bytes}",
                                 limit=self.store.config.max_upload_bytes)
        session_id = secrets.token_hex(16)
        disk, _ = self.store.disks.choose(size)
        root = os.path.join(disk.root, DIRECTORY)
        directory = os.path.join(root, session_id)
        try:
            durable.makedirs_durable(directory, stop_at=disk.root)
            fd = os.open(os.path.join(directory, "data"),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            durable.fsync_dir(directory)
        except OSError as exc:
            shutil.rmtree(directory, ignore_errors=True)
            raise storage_error(exc) from exc
        now = time.time()
        record = {"session_id": session_id, "size": size, "received": 0, "fields": fields,
                  "dir": directory,
                  "actor": {"id": actor.id, "name": actor.name, "role": actor.role},
                  "created_at": now, "updated_at": now}
        self._put(record)
        return record

    def append(self, session_id: str, offset: int, owner: str,
               length: int | None = None) -> Append:
        """Start appending at ``offset`` (``length`` bytes, when known); OffsetMismatch
        unless it is the received count, UploadTooLarge if ``length`` goes past the
        announced size, SessionBusy while another change of it runs, SessionIncomplete
        never (a completed session: Conflict ``session_completed``). The caller must
        ``close`` the Append."""
        self.store.require(M.UPLOAD)
        record = self._reserve(session_id, owner, "transfer")
        try:
            if record.get("file_id"):
                raise Conflict("this session is complete: its file is "
                               f"{record['file_id']}", code="session_completed",
                               file_id=record["file_id"])
            if offset != record["received"]:
                raise OffsetMismatch(f"this session holds {record['received']} bytes: send "
                                     f"from offset {record['received']}",
                                     received=record["received"])
            if length is not None and offset + length > record["size"]:
                raise UploadTooLarge(f"the session announced {record['size']} bytes; "
                                     f"{offset + length} were sent", limit=record["size"])
            try:
                return Append(self, record, offset)
            except OSError as exc:
                raise storage_error(exc) from exc
        except BaseException:
            self._release(session_id)
            raise

    def complete(self, session_id: str, owner: str, build_request):
        """Make the file: ``build_request(fields)`` gives its UploadRequest. Returns (attr,
        WAL sequence) once it is durable; a session completed before answers (attr, None)
        again. SessionIncomplete until every announced byte is received; what an upload
        raises (ChecksumMismatch, StorageFull, ...), the session kept as it was."""
        record = self._reserve(session_id, owner, "completion")
        try:
            if record.get("file_id"):
                return self.store.get(record["file_id"]).attr, None
            if record["received"] != record["size"]:
                raise SessionIncomplete(f"{record['received']} of {record['size']} bytes "
                                        "received", received=record["received"])
            writer = self.store.begin_upload(record["size"])
            try:
                self._copy(record, writer)
                prepared = self.store.finish_upload(
                    writer, build_request(record["fields"]), W.Actor(**record["actor"]))
            except BaseException:
                writer.abort()
                raise
            attr = self.store.commit_upload(prepared).result()
            # Kept, without its bytes, until it expires: a client that lost this answer
            # and asks again gets the same file, not a second one.
            record.update(file_id=attr["file_id"], updated_at=time.time())
            self._put(record)
            shutil.rmtree(record["dir"], ignore_errors=True)
            return attr, prepared.seq
        finally:
            self._release(session_id)

    @staticmethod
    def _copy(record: dict, writer) -> None:
        """The session's bytes, exactly its size of them, into ``writer``."""
        path = os.path.join(record["dir"], "data")
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size < record["size"]:
                    raise StoreCorrupt(f"session {record['session_id']} lost bytes")
                left = record["size"]
                while left > 0:
                    chunk = f.read(min(4 << 20, left))
                    if not chunk:
                        raise StoreCorrupt(f"session {record['session_id']} lost bytes")
                    writer.write(chunk)
                    left -= len(chunk)
        except OSError as exc:
            raise storage_error(exc) from exc

    def abort(self, session_id: str, owner: str | None = None) -> None:
        """Forget the session and its bytes; NotFound; SessionBusy during a transfer."""
        record = self._reserve(session_id, owner, "abort")
        try:
            self._forget(record)
        finally:
            self._release(session_id)

    def _forget(self, record: dict) -> None:
        # The bytes first: a crash in between leaves a record without bytes (removed at
        # expiry), never bytes that nothing names.
        shutil.rmtree(record["dir"], ignore_errors=True)
        with self.env.write() as txn:
            txn.delete(record["session_id"].encode(), db=self._db())

    def expire(self, idle_seconds: float, now: float | None = None) -> int:
        """Forget every session untouched for ``idle_seconds`` (completed ones too); how
        many."""
        now = time.time() if now is None else now
        with self.env.read() as txn:
            ids = [W.unpack(v)["session_id"] for _, v in txn.cursor(db=self._db())]
        gone = 0
        for session_id in ids:
            try:
                record = self._reserve(session_id, None, "expiry")
            except (NotFound, SessionBusy):
                continue
            try:
                if now - record["updated_at"] > idle_seconds:
                    self._forget(record)
                    gone += 1
            finally:
                self._release(session_id)
        return gone
