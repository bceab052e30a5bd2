"""Multipart uploads: parts stored durably as they arrive, one file made of them at the end.

An upload is a record in the ``uploads`` database (upload id → bucket, key, who, when, the
content type and metadata to give the file, and its parts) and a directory
``<disk root>/multipart/<upload id>/`` holding one file per part, on the data disk with the
most room when it was made (never on the filesystem of the catalog). A part is durable when
``PartWriter.commit`` returns: its bytes are flushed (fdatasync), it is renamed into place
(the directory flushed) and then recorded; a part sent again replaces the earlier one. So a
client whose connection dropped (or a daemon that restarted) lists the parts and sends only
the missing ones.

``complete`` builds one ordinary ArtStore file from the named parts through the normal upload
path (hashed again, SHA-256 of the whole, committed by the group commit) and then forgets the
upload; ``abort`` forgets it at once; ``expire`` forgets the ones left unfinished longer than
a configured time. Nothing here touches the catalog until ``complete``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import threading
import time

from . import attrs as A
from . import buckets, durable
from . import lmdb_schema as S
from . import modes as M
from . import wal as W
from .errors import ArtStoreError, Conflict, NotFound, ValidationError, storage_error

MAX_PARTS = 10_000
MIN_PART_BYTES = 5 << 20          # S3's rule for every part but the last
DIRECTORY = "multipart"


class InvalidPart(ArtStoreError):
    """A part named in a completion is missing or is not the one that was stored."""
    code = "invalid_part"
    status = 400
    title = "Invalid part"


class PartTooSmall(ArtStoreError):
    code = "part_too_small"
    status = 400
    title = "Part too small"


def _no_upload(upload_id: str) -> NotFound:
    return NotFound(f"no multipart upload {upload_id[:80]!r}", code="upload_not_found")


class PartWriter:
    """Receives one part (from one thread at a time); ``commit`` makes it durable and
    recorded, ``abort`` removes what was written. Raises OSError for I/O failures."""

    def __init__(self, uploads: "MultipartUploads", upload_id: str, number: int):
        self.uploads, self.upload_id, self.number = uploads, upload_id, number
        self.dir = uploads.path_of(upload_id)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.tmp = os.path.join(self.dir, f"{number:05d}.{secrets.token_hex(4)}.tmp")
        self._fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                           0o600)
        self._sha256 = hashlib.sha256()
        self.size = 0
        # abort() may come from another thread while a write runs: it waits for it, so a
        # closed (and maybe reused) descriptor is never written to.
        self._io = threading.Lock()

    @property
    def sha256_hex(self) -> str:
        """The SHA-256 of what was written so far."""
        return self._sha256.hexdigest()

    def write_many(self, chunks) -> None:
        with self._io:
            if self._fd is None:
                raise ValueError("part already committed or aborted")
            for chunk in chunks:
                self._sha256.update(chunk)
            try:
                durable.writev_all(self._fd, chunks)
            except OSError as exc:
                raise storage_error(exc) from exc
            self.size += sum(len(c) for c in chunks)

    def commit(self) -> dict:
        """Flush, put in place, record; returns the part's record {number, size, sha256,
        at}. NotFound ``upload_not_found`` if the upload was completed or aborted meanwhile
        (nothing is kept then)."""
        with self._io:
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                raise storage_error(exc) from exc
            finally:
                os.close(self._fd)
                self._fd = None
        final = os.path.join(self.dir, f"{self.number:05d}.part")
        part = {"number": self.number, "size": self.size,
                "sha256": self._sha256.hexdigest(), "at": time.time()}
        with self.uploads.lock:
            record = self.uploads.get(self.upload_id)   # still there?
            self.uploads._not_completing(self.upload_id)
            os.rename(self.tmp, final)
            durable.fsync_dir(self.dir)
            record["parts"][str(self.number)] = part
            self.uploads._put(self.upload_id, record)
        return part

    def abort(self) -> None:
        with self._io:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


class MultipartUploads:
    """Thread-safe. Every method that changes something is durable when it returns."""

    def __init__(self, store):
        self.store = store
        self.env = store.env
        # Serialises record updates of parts (read-modify-write of one record) and marks.
        self.lock = threading.Lock()
        self._completing: set[str] = set()
        self._completed: dict[str, tuple[float, tuple]] = {}   # for a retried Complete

    def _roots(self) -> list[str]:
        return [os.path.join(d.root, DIRECTORY) for d in self.store.disks]

    def path_of(self, upload_id: str) -> str:
        """Where the upload's parts live (its record names the disk)."""
        return self.get(upload_id)["dir"]

    def _not_completing(self, upload_id: str) -> None:
        if upload_id in self._completing:
            raise Conflict("the upload is being completed", code="upload_completing")

    def _db(self):
        return self.env.db(S.DB_UPLOADS)

    def _put(self, upload_id: str, record: dict) -> None:
        with self.env.write() as txn:
            txn.put(upload_id.encode(), W.pack(record), db=self._db())

    def get(self, upload_id: str) -> dict:
        if not isinstance(upload_id, str) or not upload_id.isalnum() or len(upload_id) > 64:
            raise _no_upload(str(upload_id))
        with self.env.read() as txn:
            raw = txn.get(upload_id.encode(), db=self._db())
        if raw is None:
            raise _no_upload(upload_id)
        return W.unpack(raw)

    def create(self, bucket: str, key: str, actor: W.Actor, *, content_type: str | None,
               custom_attributes: dict) -> str:
        """A new upload id for ``key`` in ``bucket``. ModeNotAllowed, NotFound
        ``bucket_not_found``, ValidationError for a bad key."""
        self.store.require(M.UPLOAD)
        buckets.validate_object_key(key)
        content_type = A.validate_content_type(content_type)
        A.validate_custom_attributes(custom_attributes)
        with self.store.view.snapshot() as snap:
            snap.buckets().require_bucket(bucket)
        upload_id = secrets.token_hex(16)
        disk, _ = self.store.disks.choose(0)
        root = os.path.join(disk.root, DIRECTORY)
        try:
            os.makedirs(os.path.join(root, upload_id), mode=0o700)
            durable.fsync_dir(root)
        except OSError as exc:
            raise storage_error(exc) from exc
        self._put(upload_id, {"upload_id": upload_id, "bucket": bucket, "key": key,
                              "dir": os.path.join(root, upload_id),
                              "initiated": time.time(),
                              "actor": {"id": actor.id, "name": actor.name,
                                        "role": actor.role},
                              "content_type": content_type,
                              "custom_attributes": custom_attributes, "parts": {}})
        return upload_id

    def part_writer(self, upload_id: str, number: int) -> PartWriter:
        """A writer for part ``number`` (1-10,000) of an existing upload."""
        if not isinstance(number, int) or not 1 <= number <= MAX_PARTS:
            raise ValidationError(f"part numbers are 1-{MAX_PARTS}", code="invalid_part_number")
        self.store.require(M.UPLOAD)
        self.get(upload_id)
        with self.lock:
            self._not_completing(upload_id)
        try:
            return PartWriter(self, upload_id, number)
        except OSError as exc:
            raise storage_error(exc) from exc

    def list(self, bucket: str | None = None) -> list[dict]:
        with self.env.read() as txn:
            records = [W.unpack(v) for _, v in txn.cursor(db=self._db())]
        return sorted((r for r in records if bucket is None or r["bucket"] == bucket),
                      key=lambda r: (r["key"].encode(), r["initiated"]))

    def abort(self, upload_id: str) -> None:
        """Forget the upload and remove its parts. NotFound if there is none; Conflict
        ``upload_completing`` while a Complete of it runs."""
        with self.lock:
            self._not_completing(upload_id)
            self._forget(upload_id)

    def _forget(self, upload_id: str) -> None:
        """(Under ``lock``.) Drop the record and the parts; NotFound if there is none."""
        directory = self.get(upload_id)["dir"]
        with self.env.write() as txn:
            txn.delete(upload_id.encode(), db=self._db())
        shutil.rmtree(directory, ignore_errors=True)

    def complete(self, upload_id: str,
                 parts: list[tuple[int, str | None]]) -> tuple[dict, int]:
        """Make one file of the named parts (ascending part numbers; each ``sha256`` as
        the part's answer gave it, or None to skip that check) and return its attr and WAL
        sequence once it is durable; the upload is then gone (a second Complete of it,
        within an hour, gets the same answer). One Complete at a time: parts, aborts and expiry of the upload wait
        for it (Conflict ``upload_completing``). InvalidPart (also when a part's file no
        longer hashes to its record), PartTooSmall, ValidationError; and what an upload
        raises (ModeNotAllowed, StorageFull, ...), the upload kept."""
        from .uploads import UploadRequest
        with self.lock:
            done = self._completed.get(upload_id)
            if done is not None:
                return done[1]
            self._not_completing(upload_id)
            record = self.get(upload_id)
            self._completing.add(upload_id)
        try:
            chosen = self._chosen(record, parts)
            writer = self.store.begin_upload(sum(p["size"] for p in chosen))
            try:
                for part in chosen:
                    self._copy_part(record, part, writer)
                prepared = self.store.finish_upload(writer, UploadRequest(
                    original_filename=buckets.filename_of(record["key"]), content_type=record.get("content_type"),
                    custom_attributes=record.get("custom_attributes"),
                    bucket=record["bucket"], object_key=record["key"]),
                    W.Actor(**record["actor"]))
            except BaseException:
                writer.abort()
                raise
            answer = self.store.commit_upload(prepared).result(), prepared.seq
            with self.lock:
                now = time.time()
                self._completed = {k: v for k, v in self._completed.items()
                                   if now - v[0] < 3600}
                self._completed[upload_id] = (now, answer)
                self._forget(upload_id)
            return answer
        finally:
            with self.lock:
                self._completing.discard(upload_id)

    @staticmethod
    def _chosen(record: dict, parts: list[tuple[int, str | None]]) -> list[dict]:
        if not parts:
            raise ValidationError("name at least one part", code="malformed_parts")
        numbers = [n for n, _ in parts]
        if numbers != sorted(set(numbers)):
            raise ValidationError("parts must be listed in ascending order, each once",
                                  code="invalid_part_order")
        chosen = []
        for i, (number, sha256) in enumerate(parts):
            part = record["parts"].get(str(number))
            if part is None or (sha256 is not None and sha256 != part["sha256"]):
                raise InvalidPart(f"part {number} was not uploaded, or not with that ETag")
            if i < len(parts) - 1 and part["size"] < MIN_PART_BYTES:
                raise PartTooSmall(f"part {number} has {part['size']} bytes; every part but "
                                   f"the last needs at least {MIN_PART_BYTES}")
            chosen.append(part)
        return chosen

    @staticmethod
    def _copy_part(record: dict, part: dict, writer) -> None:
        """Append one part's file to ``writer``, checking it is still what was recorded."""
        path = os.path.join(record["dir"], f"{part['number']:05d}.part")
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(4 << 20):
                    digest.update(chunk)
                    writer.write(chunk)
        except FileNotFoundError:
            raise InvalidPart(f"part {part['number']}'s bytes are gone") from None
        except OSError as exc:
            raise storage_error(exc) from exc
        if digest.hexdigest() != part["sha256"]:
            raise InvalidPart(f"part {part['number']} no longer hashes to what was stored")

    def expire(self, idle_seconds: float, now: float | None = None) -> int:
        """Abort every upload that got no part for ``idle_seconds`` (counted from its
        creation when it has none), unless it is being completed; how many."""
        now = time.time() if now is None else now
        gone = 0
        for record in self.list():
            last = max([record["initiated"]] + [p["at"] for p in record["parts"].values()])
            if now - last > idle_seconds:
                with self.lock:
                    if record["upload_id"] in self._completing:
                        continue
                    try:
                        self._forget(record["upload_id"])
                        gone += 1
                    except NotFound:
                        pass
        # Directories whose record is gone (a crash between the two steps of abort, or of
        # create), once they are old enough not to be a create under way.
        known = {r["upload_id"] for r in self.list()}
        for root in self._roots():
            try:
                names = os.listdir(root)
            except FileNotFoundError:
                continue
            for name in names:
                path = os.path.join(root, name)
                try:
                    if name not in known and now - os.stat(path).st_mtime > 3600:
                        shutil.rmtree(path, ignore_errors=True)
                except FileNotFoundError:
                    pass
        return gone
