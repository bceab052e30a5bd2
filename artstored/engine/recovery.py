"""Resolving PENDING intents at start, before anything is served.

- ``file.place``: the upload is committed; finish moving its data and sidecar from tmp/
  into objects/ (each rename is atomic, so each file is at one place or the other), after
  checking that the data has the catalogued size and SHA-256 and the sidecar names the file.
  Damaged files are never moved into objects/: they stay where they are, the intent stays,
  and the report counts them as ``damaged``. A file already in objects/ is never replaced
  by a copy left in tmp/ (it may have been PATCHed since).
- ``file.update``: the sidecar was replaced atomically, so it holds either the old or the
  new version: roll forward if it is the new one, else roll back.
- ``file.delete``: always roll forward (the removal was asked for and is idempotent).

Then every online disk's ``tmp/`` is emptied of what no remaining intent names: uploads in
flight died with the process that received them. Intents name files by disk identity and
names inside the disk, never by absolute path, so a root mounted elsewhere is still found;
an intent on an offline disk stays for a later start. The caller holds the data
directory's lock, so nothing else is writing.
"""

from __future__ import annotations

import logging
import os

from . import attrs as A
from . import catalog, durable
from . import layout as L
from . import wal as W
from .catalog import CatalogEntry
from .errors import DiskOffline, StoreCorrupt
from .objectfiles import hash_file, remove_object_files
from .replica import put_tombstone

log = logging.getLogger("artstored.engine.recovery")


class DamagedObject(StoreCorrupt):
    """A committed file's bytes or sidecar do not match its catalog entry."""


def recover(store) -> dict:
    """Resolve every intent; returns {rolled_forward, rolled_back, unresolved, damaged,
    tmp_removed}. Never deletes a file that an unresolved intent names."""
    env = store.env
    report = {"rolled_forward": 0, "rolled_back": 0, "unresolved": 0, "damaged": 0,
              "tmp_removed": 0}
    keep: set[str] = set()  # tmp/ paths named by intents that stay
    with env.read() as txn:
        pending = W.intents(txn, env)
    for op_id, intent in pending:
        kind = intent.get("kind")
        try:
            if kind == W.FILE_PLACE:
                outcome = _resolve_place(store, op_id, intent)
            elif kind == W.FILE_UPDATE:
                outcome = _resolve_update(store, op_id, intent)
            elif kind in (W.FILE_DELETE, W.FILE_RELEASE):
                outcome = _resolve_delete(store, op_id, intent)
            else:
                raise StoreCorrupt(f"unknown intent kind {kind!r}")
        except (StoreCorrupt, DiskOffline) as exc:
            # e.g. its disk is offline or not configured now, or its bytes are damaged:
            # keep the intent, and every file it names, for later.
            log.error("cannot resolve intent %s (%s %s): %s", op_id.hex(), kind,
                      intent.get("file_id"), exc)
            report["damaged" if isinstance(exc, DamagedObject) else "unresolved"] += 1
            if kind == W.FILE_PLACE:
                keep.update(_tmp_candidates(store, intent))
            continue
        report[outcome] += 1
        log.info("recovery: %s %s %s", kind, intent.get("file_id"), outcome)
    for disk in store.disks.online():
        for name in os.listdir(disk.tmp):
            path = os.path.join(disk.tmp, name)
            if path in keep or path.removesuffix(L.ATTR_SUFFIX) in keep:
                continue
            os.unlink(path)
            report["tmp_removed"] += 1
        if report["tmp_removed"]:
            durable.fsync_dir(disk.tmp)
    return report


def _finish(store, op_id: bytes, intent: dict, *, state: str, data: dict | None = None,
            put: CatalogEntry | None = None, delete: CatalogEntry | None = None,
            tombstone: bool = False, origin: dict | None = None) -> None:
    env = store.env
    actor = W.Actor(intent["actor"]["id"], intent["actor"]["name"])
    with env.write() as txn:
        if put is not None:
            catalog.put(txn, env, put)
        if delete is not None:
            catalog.delete(txn, env, delete)
        if tombstone:
            put_tombstone(txn, env, intent["file_id"], actor, origin)
        W.append(txn, env, intent["kind"], actor, state=state, file_id=intent.get("file_id"),
                 data=data or {})
        W.drop_intent(txn, env, op_id)


def _read_attr(path: str) -> dict | None:
    try:
        with open(path, "rb") as f:
            return A.decode(f.read(), source=path)
    except (FileNotFoundError, StoreCorrupt):
        return None


def _tmp_candidates(store, intent: dict) -> list[str]:
    """Where a place intent's data file may be in tmp/: by its name inside the disk's tmp/
    (this format, and the basename of an older intent's absolute path), and that absolute
    path itself if it still exists."""
    out = []
    name = intent.get("tmp_name") or os.path.basename(intent.get("tmp", ""))
    try:
        disk = store.disks.get(intent["disk"])
    except StoreCorrupt:
        disk = None
    if disk is not None and name:
        out.append(os.path.join(disk.tmp, name))
    if intent.get("tmp"):
        out.append(intent["tmp"])
    return out


def _check_committed(entry: CatalogEntry, data_path: str, attr_path: str) -> None:
    """DamagedObject unless the data has the catalogued size and SHA-256 and the sidecar
    decodes and describes the same file."""
    try:
        size, sha = hash_file(data_path)
    except FileNotFoundError:
        raise StoreCorrupt(f"committed file {entry.file_id}: {data_path} is missing") from None
    if size != entry.size or sha != entry.attr.get("checksum_sha256"):
        raise DamagedObject(f"{data_path}: {size} bytes with SHA-256 {sha}, catalogued "
                            f"{entry.size} bytes {entry.attr.get('checksum_sha256')}")
    attr = _read_attr(attr_path)
    if attr is None or attr.get("file_id") != entry.file_id \
            or attr.get("checksum_sha256") != sha:
        raise DamagedObject(f"{attr_path}: sidecar missing, unreadable or of another file")


def _resolve_place(store, op_id: bytes, intent: dict) -> str:
    disk = store.disks.get(intent["disk"])
    data_path = disk.data_path(intent["rel"])
    attr_path = data_path + L.ATTR_SUFFIX
    with store.env.read() as txn:
        entry = catalog.get(txn, store.env, intent["file_id"])
    candidates = _tmp_candidates(store, intent)
    tmp_data = next((p for p in candidates if os.path.exists(p)), None)
    tmp_attr = next((p + L.ATTR_SUFFIX for p in candidates
                     if os.path.exists(p + L.ATTR_SUFFIX)), None)
    if entry is None:
        # Deleted after it was committed (older stores kept the intent): nothing to place.
        for path in filter(None, (tmp_data, tmp_attr)):
            os.unlink(path)
        _drop(store, op_id)
        return "rolled_back"
    pairs = ((tmp_data, data_path), (tmp_attr, attr_path))
    # Check the bytes where they are now, before anything moves; a file already in
    # objects/ wins over a copy in tmp/ (it may have been PATCHed since).
    _check_committed(entry, *(final if os.path.exists(final) or tmp is None else tmp
                              for tmp, final in pairs))
    durable.makedirs_durable(os.path.dirname(data_path), disk.objects)
    for tmp, final in pairs:
        if os.path.exists(final):
            if tmp is not None:
                os.unlink(tmp)
        elif tmp is not None:
            os.rename(tmp, final)
        else:
            raise StoreCorrupt(f"committed file {intent['file_id']}: {final} is missing")
    durable.fsync_dir(os.path.dirname(data_path))
    durable.fsync_dir(disk.tmp)
    _drop(store, op_id)
    return "rolled_forward"


def _drop(store, op_id: bytes) -> None:
    with store.env.write() as txn:
        W.drop_intent(txn, store.env, op_id)


def _resolve_update(store, op_id: bytes, intent: dict) -> str:
    new_attr = intent["attr"]
    with store.env.read() as txn:
        entry = catalog.get(txn, store.env, intent["file_id"])
    if entry is None:
        _finish(store, op_id, intent, state=W.ROLLED_BACK, data={"recovered": True})
        return "rolled_back"
    attr_path = store.content_path(entry) + L.ATTR_SUFFIX
    on_disk = _read_attr(attr_path)
    try:
        os.unlink(durable.temp_name_for(attr_path))
    except FileNotFoundError:
        pass
    if on_disk is not None and on_disk.get("version") == new_attr.get("version") \
            and on_disk.get("updated_at") == new_attr.get("updated_at"):
        durable.fsync_dir(os.path.dirname(attr_path))
        _finish(store, op_id, intent, state=W.COMMITTED,
                data={"attr": on_disk, "recovered": True},
                put=CatalogEntry(attr=on_disk, disk=entry.disk, rel=entry.rel))
        return "rolled_forward"
    _finish(store, op_id, intent, state=W.ROLLED_BACK, data={"recovered": True})
    return "rolled_back"


def _resolve_delete(store, op_id: bytes, intent: dict) -> str:
    """Finish a delete (with its tombstone) or a release of this node's copy (a
    ``file.release`` record, which no other node applies, and no tombstone)."""
    disk = store.disks.get(intent["disk"])
    remove_object_files(disk.data_path(intent["rel"]))
    with store.env.read() as txn:
        entry = catalog.get(txn, store.env, intent["file_id"])
    tombstone = intent["kind"] == W.FILE_DELETE
    data = {"recovered": True}
    if tombstone:
        # Relayed as any delete is: with its origin's signature, or this node's.
        if intent.get("origin"):
            data["origin"] = intent["origin"]
        else:
            data["origin_sig"] = store.node.sign(A.delete_payload(intent["file_id"]))
    _finish(store, op_id, intent, state=W.COMMITTED, data=data, delete=entry,
            tombstone=tombstone, origin=intent.get("origin"))
    return "rolled_forward"
