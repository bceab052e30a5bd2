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
from datetime import datetime, timezone

from . import attrs as A
from . import catalog, durable, ids
from . import layout as L
from . import modes as M
from . import wal as W
from . import replica, walseg
from .catalog import CatalogEntry
from .disks import DiskSet, Thresholds, thresholds_for
from .fixity import Quarantined
from .errors import FileNotFound, PreconditionFailed, StoreLocked, storage_error
from .groupcommit import GroupCommitter
from .lmdb_schema import DEFAULT_MAP_SIZE, META_DISKS, META_ELEMENT, Env
from .node import NodeIdentity
from .objectfiles import remove_object_files
from .recovery import recover
from .uploads import Uploads
from .view import ReadView

log = logging.getLogger("artstored.engine")

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


class Store(Uploads):
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


