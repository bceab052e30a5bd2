"""The Store: one data directory, opened by one process, and every durable operation on it.

Synchronous and thread-safe: the daemon calls it from worker threads, the offline CLI
directly. Opening a Store takes an exclusive lock on the data directory (StoreLocked if
another process holds it), opens LMDB, and resolves every PENDING intent before returning:
after ``Store(...)`` returns, no half-written file is visible and every acknowledged one is.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from . import attrs as A
from . import buckets, catalog, durable, ids
from . import layout as L
from . import modes as M
from . import wal as W
from . import replica, walseg
from .catalog import CatalogEntry
from .disks import DiskSet, Thresholds, thresholds_for
from .fixity import Quarantined
from .errors import (ChecksumMismatch, FileNotFound, ModeNotAllowed, PreconditionFailed,
                     StoreLocked, UploadTooLarge, ValidationError, storage_error)
from .groupcommit import GroupCommitter, PreparedUpload
from .ingest import DIRECT_BYTES, BufferedUpload, UploadWriter
from .lmdb_schema import DEFAULT_MAP_SIZE, META_DISKS, META_ELEMENT, Env
from .node import NodeIdentity
from .objectfiles import remove_object_files
from .recovery import recover
from .view import ReadView

log = logging.getLogger("artstored.engine")

PERMANENT, TEMPORARY = "permanent", "temporary"
TTL_DAYS_MIN, TTL_DAYS_MAX, TTL_DAYS_DEFAULT = 1, 365, 30
_STRIPES = 64


@dataclass
class StoreConfig:
    data_dir: str
    disks: list[str] = field(default_factory=list)   # default: <data_dir>/disks/0
    max_upload_bytes: int = 16 * 1024 ** 3
    initial_mode: str = M.RW
    sync_method: str = "syncfs"
    max_batch: int = 256
    map_size: int = DEFAULT_MAP_SIZE
    node_name: str | None = None
    thresholds: dict[str, Thresholds] | None = None
    wal_segment_records: int = walseg.DEFAULT_SEGMENT_RECORDS

    def disk_roots(self) -> list[str]:
        return self.disks or [os.path.join(self.data_dir, "disks", "0")]


@dataclass(frozen=True)
class UploadRequest:
    """What a client says about an upload besides its bytes (already parsed, not yet
    validated: ``Store.prepare_upload`` validates)."""

    original_filename: str | None
    content_type: str | None = None
    description: str | None = None
    custom_attributes: dict | None = None
    retention_policy: str | None = None
    ttl_days: int | None = None
    declared_sha256: str | None = None
    bucket: str | None = None         # an S3 name (engine.buckets): the bucket must exist
    object_key: str | None = None


class Store:
    def __init__(self, config: StoreConfig):
        self.config = config
        self.data_dir = os.path.abspath(config.data_dir)
        os.makedirs(self.data_dir, exist_ok=True)
        self._lock_fd = _lock_data_dir(self.data_dir)
        try:
            self.node = NodeIdentity(self.data_dir, config.node_name)
            self.env = Env(os.path.join(self.data_dir, "store.lmdb"), map_size=config.map_size)
            self.stale_readers_cleared = self.env.clear_stale_readers()
            self.mode_lock = threading.RLock()
            self._element = self._load_element(config.initial_mode)
            self.disks = self._open_disks(config)
            self._stripes = [threading.Lock() for _ in range(_STRIPES)]
            self._commit_listeners: list = []
            # Called with a file id when scrub quarantines it (a cluster restores it from
            # another node); quick, must not raise.
            self.quarantine_listeners: list = []
            # Every read of the catalog, the log and a file's bytes goes through this view
            # (the same one the FUSE mount, the index and the audit trail use).
            self.view = ReadView.of_store(self)
            self.recovery_report = recover(self)
            self.committer = GroupCommitter(self, max_batch=config.max_batch,
                                            sync_method=config.sync_method)
        except BaseException:
            os.close(self._lock_fd)
            raise

    def close(self) -> None:
        """Commit what is queued, close LMDB, release the directory lock. Idempotent."""
        if self._lock_fd is None:
            return
        self.committer.stop()
        self.env.close()
        os.close(self._lock_fd)
        self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _open_disks(self, config: StoreConfig) -> DiskSet:
        """The configured roots; a root this store used before and that lost its identity
        file comes up offline (see ``disks``). New roots are recorded durably."""
        with self.env.read() as txn:
            raw = txn.get(META_DISKS, db=self.env.db(b"meta"))
        known = W.unpack(raw) if raw else {}
        disks = DiskSet(config.disk_roots(), thresholds_for(self.mode, config.thresholds),
                        known=known)
        if disks.registered:
            with self.env.write() as txn:
                txn.put(META_DISKS, W.pack({**known, **disks.registered}),
                        db=self.env.db(b"meta"))
        for disk in disks.offline():
            log.error("disk root %s is offline: %s", disk.root, disk.offline_reason)
        return disks

    def maintain(self) -> dict:
        """Periodic upkeep, safe to call from any thread at any time (durable when it
        returns): clears LMDB reader slots left by processes that died inside a read
        transaction (a killed mount), which would otherwise pin old pages and make the file
        grow forever; seals old WAL records into segment files, so LMDB holds the catalog
        and fewer than ``2 × wal_segment_records`` records of the log."""
        return {"stale_readers_cleared": self.env.clear_stale_readers(),
                "wal_records_sealed": W.seal(self.env, self.config.wal_segment_records)}

    # --- element state and modes --------------------------------------------------------------

    def _load_element(self, initial_mode: str) -> dict:
        M.check_mode(initial_mode)
        with self.env.write() as txn:
            raw = txn.get(META_ELEMENT, db=self.env.db(b"meta"))
            if raw is not None:
                return W.unpack(raw)
            state = {"mode": initial_mode, "changed_by": "system",
                     "changed_at": A.format_time(_now()),
                     "created_at": A.format_time(_now()), "node_id": self.node.node_id}
            txn.put(META_ELEMENT, W.pack(state), db=self.env.db(b"meta"))
            W.append(txn, self.env, W.ELEMENT_MODE, W.SYSTEM,
                     data={"from": None, "to": initial_mode})
            return state

    @property
    def mode(self) -> str:
        return self._element["mode"]

    def element_state(self) -> dict:
        return dict(self._element)

    def require(self, operation: str) -> None:
        M.require(self.mode, operation)

    def set_mode(self, target: str, actor: W.Actor, *, confirm: bool = False,
                 note: dict | None = None) -> dict:
        """Change the element's mode (validated by ``modes.TRANSITIONS``); durable and
        recorded in the WAL with who and when (and ``note``, e.g. which cluster document
        asked for it). Same mode: no change, no record."""
        M.check_mode(target)
        with self.mode_lock:
            current = self.mode
            if target == current:
                return self.element_state()
            M.check_transition(current, target, confirmed=confirm)
            state = dict(self._element, mode=target, changed_by=actor.id,
                         changed_at=A.format_time(_now()))
            with self.env.write() as txn:
                txn.put(META_ELEMENT, W.pack(state), db=self.env.db(b"meta"))
                W.append(txn, self.env, W.ELEMENT_MODE, actor,
                         data={**(note or {}), "from": current, "to": target})
            self._element = state
        log.info("mode changed %s -> %s by %s", current, target, actor.id)
        return self.element_state()

    # --- upload -------------------------------------------------------------------------------

    def begin_upload(self, expected_size: int = 0) -> UploadWriter:
        """A writer for a new upload on the disk with the most room.

        Raises ModeNotAllowed, UploadTooLarge (``expected_size`` over the limit) or
        StorageFull before any byte is written.
        """
        self.require(M.UPLOAD)
        if expected_size > self.config.max_upload_bytes:
            raise UploadTooLarge(
                f"upload of {expected_size} bytes exceeds the limit of "
                f"{self.config.max_upload_bytes}", limit=self.config.max_upload_bytes)
        disk, _ = self.disks.choose(expected_size)
        return UploadWriter(self.disks, disk, self.config.max_upload_bytes,
                            direct=expected_size >= DIRECT_BYTES)

    def retention_for(self, policy: str | None, ttl_days: int | None) -> tuple[str, int | None]:
        """(policy, ttl_days) after defaults and the mode's rules; raises ValidationError or
        ModeNotAllowed (a permanent upload to an edit element)."""
        mode = self.mode
        if policy in (None, ""):
            policy = TEMPORARY if mode == M.EDIT else PERMANENT
        if policy not in (PERMANENT, TEMPORARY):
            raise ValidationError(f"retention_policy must be {PERMANENT} or {TEMPORARY}",
                                  code="invalid_retention")
        if policy == PERMANENT:
            if mode == M.EDIT:
                raise ModeNotAllowed("an edit element keeps only temporary files",
                                     mode=mode, operation="upload_permanent")
            if ttl_days is not None:
                raise ValidationError("ttl_days applies to temporary files only",
                                      code="invalid_retention")
            return policy, None
        ttl = TTL_DAYS_DEFAULT if ttl_days is None else ttl_days
        if not isinstance(ttl, int) or not TTL_DAYS_MIN <= ttl <= TTL_DAYS_MAX:
            raise ValidationError(f"ttl_days must be {TTL_DAYS_MIN}-{TTL_DAYS_MAX}",
                                  code="invalid_retention")
        return policy, ttl

    def finish_upload(self, writer: UploadWriter, request: UploadRequest,
                      actor: W.Actor) -> PreparedUpload:
        """``writer.finish()`` then ``prepare_upload``: one call, so that a shell makes one
        thread hop for both. Raises what either raises; the caller then aborts the writer."""
        writer.finish()
        return self.prepare_upload(writer, request, actor)

    def prepare_upload(self, writer: UploadWriter, request: UploadRequest,
                       actor: W.Actor) -> PreparedUpload:
        """Validate the finished upload and build its attr record.

        ``writer.finish()`` must have been called. Raises ChecksumMismatch, ValidationError,
        AttrTooLarge or ModeNotAllowed; the caller then aborts the writer (nothing is kept).
        """
        name = A.validate_original_filename(request.original_filename)
        policy, ttl = self.retention_for(request.retention_policy, request.ttl_days)
        if request.declared_sha256 is not None:
            declared = request.declared_sha256.strip().lower()
            if declared != writer.sha256_hex:
                raise ChecksumMismatch(
                    f"declared sha256 {declared[:64]} but the content hashes to "
                    f"{writer.sha256_hex}", declared=declared[:64], actual=writer.sha256_hex)
        now = _now()
        file_id = ids.new_file_id(now.timestamp())
        storage_name = L.storage_filename(name, actor.name, now, file_id)
        attr = {
            "schema_version": A.SCHEMA_VERSION,
            "file_id": file_id,
            "original_filename": name,
            "storage_filename": storage_name,
            "file_size": writer.size,
            "content_type": A.validate_content_type(request.content_type),
            "created_at": A.format_time(now),
            "created_by_id": actor.id,
            "created_by_username": actor.name,
            "description": A.validate_description(request.description),
            "version": 1,
            "checksum_sha256": writer.sha256_hex,
            "custom_attributes": A.validate_custom_attributes(request.custom_attributes),
            **self._s3_name(request),
            "xxh3_128": writer.xxh3_hex,
            "origin_node": self.node.node_id,
            "retention_policy": policy,
            "expires_at": A.format_time(now + timedelta(days=ttl)) if ttl else None,
            "updated_at": None, "updated_by_id": None, "updated_by_username": None,
        }
        attr["signature"] = self.node.sign(A.fixity_payload(attr))
        attr["change_signature"] = self.node.sign(A.record_payload(attr))
        data = A.encode(attr)
        entry = CatalogEntry(attr=attr, disk=writer.disk.disk_id,
                             rel=L.object_relpath(now, storage_name))
        return PreparedUpload(writer=writer, entry=entry, attr_bytes=data, actor=actor)

    def _s3_name(self, request: UploadRequest) -> dict:
        """The attr fields of an upload's S3 name; none without one. NotFound
        ``bucket_not_found``, ValidationError for a bad key."""
        if request.bucket is None and request.object_key is None:
            return {}
        key = buckets.validate_object_key(request.object_key)
        with self.view.snapshot() as snap:
            snap.buckets().require_bucket(request.bucket or "")
        return {"bucket": request.bucket, "object_key": key}

    def create_bucket(self, name: str, actor: W.Actor) -> dict:
        """See ``buckets.create`` (durable on return; Conflict ``bucket_exists``)."""
        record = buckets.create(self.env, name, actor)
        self.notify_committed()
        return record

    def delete_bucket(self, name: str, actor: W.Actor) -> None:
        """See ``buckets.delete`` (NotFound, Conflict ``bucket_not_empty``)."""
        buckets.delete(self.env, name, actor)
        self.notify_committed()

    def commit_upload(self, prepared: PreparedUpload):
        """Hand a prepared upload to the group commit; returns a concurrent Future that
        resolves to the attr record once the file, its sidecar and its catalog entry are
        durable (or to the error, the files removed)."""
        return self.committer.submit(prepared)

    def prepare_buffered(self, chunks, request: UploadRequest,
                         actor: W.Actor) -> PreparedUpload:
        """A PreparedUpload for content already in memory: no disk I/O here (the group commit
        writes it with its batch), so an event loop may call it directly. Raises what
        ``begin_upload`` and ``prepare_upload`` raise; then nothing stays claimed."""
        buffered = self.buffer(chunks)
        try:
            return self.prepare_upload(buffered, request, actor)
        except BaseException:
            buffered.abort()   # its size was claimed on the disk
            raise

    def buffer(self, chunks) -> BufferedUpload:
        """An upload of bytes already in memory, on the disk with the most room: hashed
        now, written by the group commit with its batch (no disk I/O here). Raises
        ModeNotAllowed, UploadTooLarge, StorageFull."""
        self.require(M.UPLOAD)
        chunks = list(chunks)
        disk, _ = self.disks.choose(sum(len(c) for c in chunks))
        return BufferedUpload(self.disks, disk, self.config.max_upload_bytes, chunks)

    def ingest(self, chunks, request: UploadRequest, actor: W.Actor) -> dict:
        """Blocking upload of an iterable of byte chunks; returns the attr record."""
        writer = self.begin_upload()
        try:
            writer.write_many(list(chunks))
            prepared = self.finish_upload(writer, request, actor)
        except BaseException:
            writer.abort()
            raise
        return self.commit_upload(prepared).result()

    # --- read ---------------------------------------------------------------------------------

    def get(self, file_id: str) -> CatalogEntry:
        """The catalog entry of ``file_id``; FileNotFound if there is none."""
        entry = self.view.entry(file_id)
        if entry is None:
            raise FileNotFound(f"no file with id {file_id}")
        return entry

    def content_path(self, entry: CatalogEntry) -> str:
        """Where ``entry``'s data file lives once placed (DiskOffline if its disk is)."""
        return self.disks.get(entry.disk).data_path(entry.rel)

    def open_content(self, file_id: str):
        """(entry, the data file opened for reading); the caller closes it.

        ModeNotAllowed in ``ar`` (content offline); FileNotFound; DiskOffline if its disk
        is; StoreCorrupt if the catalog has the file and the disk does not. A file committed
        a moment ago may still be on its way from tmp/ into objects/: it is found at either
        place (``ReadView.open_content``).
        """
        return self.open_entry(self.get(file_id))

    def open_entry(self, entry: CatalogEntry):
        """As ``open_content``, for an entry the caller has read already."""
        self.require(M.READ_CONTENT)
        self.content_path(entry)  # DiskOffline, naming the root, before anything else
        return entry, os.fdopen(self.view.open_content(entry), "rb")

    def list(self, *, limit: int = 100, cursor: str | None = None,
             order: str = catalog.DESC) -> tuple[list[dict], str | None]:
        entries, next_cursor = self.view.page(limit=limit, cursor=cursor, order=order)
        return [e.attr for e in entries], next_cursor

    def stats(self) -> dict:
        return self.view.stats()

    def capacity(self) -> dict:
        return self.disks.report()

    # --- change -------------------------------------------------------------------------------

    def _stripe(self, file_id: str) -> threading.Lock:
        return self._stripes[hash(file_id) % _STRIPES]

    def file_lock(self, file_id: str) -> threading.Lock:
        """The lock PATCH and DELETE hold for ``file_id`` (a stripe shared with other
        ids); whoever moves the file's data or sidecar holds it too."""
        return self._stripe(file_id)

    def _refuse_quarantined(self, file_id: str) -> None:
        record = self.view.fixity(file_id)
        if record is not None and record.get("quarantine"):
            raise Quarantined(f"file {file_id} failed a fixity check and is in quarantine "
                              f"({record['quarantine']['reason']})", file_id=file_id)

    def patch(self, file_id: str, patch, actor: W.Actor, *,
              expected_version: int | None = None) -> dict:
        """Apply a JSON merge patch to the mutable metadata; ``version`` + 1.

        Durable when it returns: attr.json replaced atomically, then the catalog and WAL in
        one transaction. Raises FileNotFound, ModeNotAllowed, ValidationError, AttrTooLarge,
        PreconditionFailed (``expected_version`` differs).
        """
        self.require(M.UPDATE_METADATA)
        with self._stripe(file_id):
            entry = self.get(file_id)
            self._refuse_quarantined(file_id)
            if expected_version is not None and expected_version != entry.attr.get("version"):
                raise PreconditionFailed(
                    f"file is at version {entry.attr.get('version')}, not {expected_version}",
                    version=entry.attr.get("version"))
            new_attr = A.patched(entry.attr, patch, actor_id=actor.id, actor_name=actor.name,
                                 now=_now())
            new_attr["change_signature"] = self.node.sign(A.record_payload(new_attr))
            data = A.encode(new_attr)
            new_entry = CatalogEntry(attr=new_attr, disk=entry.disk, rel=entry.rel)
            op = ids.file_id_key(ids.new_file_id())
            attr_path = self.content_path(entry) + L.ATTR_SUFFIX
            # Committed a moment ago? Its sidecar may still be on its way into objects/;
            # writing now would be undone by that rename.
            self.committer.wait_placed(file_id)
            with self.mode_lock:
                self.require(M.UPDATE_METADATA)
                with self.env.write() as txn:
                    W.put_intent(txn, self.env, op, W.FILE_UPDATE, actor, file_id=file_id,
                                 attr=new_attr)
                try:
                    durable.atomic_write(attr_path, data)
                except BaseException as exc:
                    with self.env.write() as txn:
                        W.append(txn, self.env, W.FILE_UPDATE, actor, state=W.ROLLED_BACK,
                                 file_id=file_id)
                        W.drop_intent(txn, self.env, op)
                    if isinstance(exc, OSError):
                        raise storage_error(exc) from exc
                    raise
                with self.env.write() as txn:
                    catalog.put(txn, self.env, new_entry)
                    W.append(txn, self.env, W.FILE_UPDATE, actor, file_id=file_id,
                             data={"attr": new_attr})
                    W.drop_intent(txn, self.env, op)
        self.notify_committed()
        return new_attr

    def delete(self, file_id: str, actor: W.Actor, *, reason: str = "request",
               check_mode: bool = True, origin: dict | None = None) -> None:
        """Remove a file, its sidecar and its catalog entry, and leave a tombstone (a
        replica of it is never taken back); durable when it returns.

        The sidecar goes first, so a crash never leaves content that a rebuild would bring
        back. Raises FileNotFound, ModeNotAllowed (unless ``check_mode`` is False, which the
        retention GC and replicated deletes use). ``origin``: the node and WAL sequence of
        a delete made elsewhere first.
        """
        if check_mode:
            self.require(M.DELETE)

        def record(txn, entry) -> None:
            data = {"reason": reason, "size": entry.size,
                    "checksum_sha256": entry.attr.get("checksum_sha256")}
            if origin is not None:
                data["origin"] = origin     # with its signature: relayed as it came
            else:
                data["origin_sig"] = self.node.sign(A.delete_payload(file_id))
            W.append(txn, self.env, W.FILE_DELETE, actor, file_id=file_id, data=data)
            replica.put_tombstone(txn, self.env, file_id, actor, origin)

        # The intent names the origin too: a delete finished by recovery is relayed as
        # the same delete (or signed by this node, which then took it).
        self._remove(file_id, actor, record, check_mode=check_mode, kind=W.FILE_DELETE,
                     intent_extra={"origin": origin} if origin is not None else {})

    def release_copy(self, file_id: str, data: dict) -> None:
        """Drop this node's copy of a file that lives on (a hand-off copy, or one whose
        owners changed), once its owners hold it: as ``delete`` on this node, but recorded
        as ``file.release`` (which no other node applies) and with no tombstone. The
        caller has checked that enough other copies are durable. FileNotFound if none."""
        def record(txn, entry) -> None:
            W.append(txn, self.env, W.FILE_RELEASE, W.SYSTEM, file_id=file_id,
                     data={**data, "size": entry.size,
                           "checksum_sha256": entry.attr.get("checksum_sha256")})

        self._remove(file_id, W.SYSTEM, record, check_mode=False, kind=W.FILE_RELEASE)

    def _remove(self, file_id: str, actor: W.Actor, record, *, check_mode: bool,
                kind: str, intent_extra: dict | None = None) -> None:
        """Remove a file's objects and catalog entry; ``record(txn, entry)`` writes what
        the removal is (a delete or a release). The intent is of the same ``kind``, so a
        crash in between is finished by recovery as what it was."""
        with self._stripe(file_id):
            entry = self.get(file_id)
            data_path = self.content_path(entry)
            # A rename into objects/ still under way would bring the file back.
            self.committer.wait_placed(file_id)
            op = ids.file_id_key(ids.new_file_id())
            with self.mode_lock:
                if check_mode:
                    self.require(M.DELETE)
                with self.env.write() as txn:
                    W.put_intent(txn, self.env, op, kind, actor, file_id=file_id,
                                 disk=entry.disk, rel=entry.rel, **(intent_extra or {}))
                remove_object_files(data_path)
                with self.env.write() as txn:
                    catalog.delete(txn, self.env, entry)
                    # The upload's place intent, if the batch after it has not dropped it
                    # yet: recovery must not look for the files this delete removed.
                    W.drop_intent(txn, self.env, ids.file_id_key(file_id))
                    record(txn, entry)
                    W.drop_intent(txn, self.env, op)
        self.notify_committed()

    def record_event(self, kind: str, actor: W.Actor, data: dict) -> int:
        """Append an audit record that changes no file (sign-in failures in aggregate, a key
        rotation); returns its sequence number. Durable when it returns."""
        if kind not in W.KINDS:
            raise ValueError(f"unknown WAL record kind {kind!r}")
        with self.env.write() as txn:
            seq = W.append(txn, self.env, kind, actor, data=data)
        self.notify_committed()
        return seq

    # --- followers ------------------------------------------------------------------------

    def add_commit_listener(self, callback) -> None:
        """``callback()`` runs (on the committing thread) after each WAL commit; it must be
        quick and must not raise (the index follower uses it to wake up)."""
        self._commit_listeners.append(callback)

    def notify_committed(self) -> None:
        for callback in self._commit_listeners:
            try:
                callback()
            except Exception:  # a listener's bug must not fail a committed write
                log.exception("commit listener failed")


def _lock_data_dir(data_dir: str) -> int:
    fd = os.open(os.path.join(data_dir, "artstored.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLocked(f"{data_dir} is in use by another artstored or artstore process") \
            from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _now() -> datetime:
    return datetime.now(timezone.utc)


