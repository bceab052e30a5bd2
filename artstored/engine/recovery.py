"""Resolving PENDING intents at start, before anything is served.

- ``file.place``: the upload is committed; finish moving its data and sidecar from tmp/
  into objects/ (each rename is atomic, so each file is at one place or the other).
- ``file.update``: the sidecar was replaced atomically, so it holds either the old or the
  new version: roll forward if it is the new one, else roll back.
- ``file.delete``: always roll forward (the removal was asked for and is idempotent).

Then every disk's ``tmp/`` is emptied: uploads in flight died with the process that
received them. The caller holds the data directory's lock, so nothing else is writing.
"""

from __future__ import annotations

import logging
import os

from . import attrs as A
from . import catalog, durable
from . import layout as L
from . import wal as W
from .catalog import CatalogEntry
from .errors import StoreCorrupt
from .objectfiles import remove_object_files

log = logging.getLogger("artstored.engine.recovery")


def recover(store) -> dict:
    """Resolve every intent; returns {rolled_forward, rolled_back, unresolved, tmp_removed}."""
    env = store.env
    report = {"rolled_forward": 0, "rolled_back": 0, "unresolved": 0, "tmp_removed": 0}
    with env.read() as txn:
        pending = W.intents(txn, env)
    for op_id, intent in pending:
        kind = intent.get("kind")
        try:
            if kind == W.FILE_PLACE:
                outcome = _resolve_place(store, op_id, intent)
            elif kind == W.FILE_UPDATE:
                outcome = _resolve_update(store, op_id, intent)
            elif kind == W.FILE_DELETE:
                outcome = _resolve_delete(store, op_id, intent)
            else:
                raise StoreCorrupt(f"unknown intent kind {kind!r}")
        except StoreCorrupt as exc:
            # e.g. the disk that holds it is not configured now: keep the intent for later.
            log.error("cannot resolve intent %s (%s): %s", op_id.hex(), kind, exc)
            report["unresolved"] += 1
            continue
        report[outcome] += 1
        log.info("recovery: %s %s %s", kind, intent.get("file_id"), outcome)
    for disk in store.disks:
        for name in os.listdir(disk.tmp):
            os.unlink(os.path.join(disk.tmp, name))
            report["tmp_removed"] += 1
    return report


def _finish(store, op_id: bytes, intent: dict, *, state: str, data: dict | None = None,
            put: CatalogEntry | None = None, delete: CatalogEntry | None = None) -> None:
    env = store.env
    actor = W.Actor(intent["actor"]["id"], intent["actor"]["name"])
    with env.write() as txn:
        if put is not None:
            catalog.put(txn, env, put)
        if delete is not None:
            catalog.delete(txn, env, delete)
        W.append(txn, env, intent["kind"], actor, state=state, file_id=intent.get("file_id"),
                 data=data or {})
        W.drop_intent(txn, env, op_id)


def _read_attr(path: str) -> dict | None:
    try:
        with open(path, "rb") as f:
            return A.decode(f.read(), source=path)
    except (FileNotFoundError, StoreCorrupt):
        return None


def _resolve_place(store, op_id: bytes, intent: dict) -> str:
    disk = store.disks.get(intent["disk"])
    data_path = disk.data_path(intent["rel"])
    moves = ((intent["tmp"], data_path), (intent["tmp"] + L.ATTR_SUFFIX,
                                          data_path + L.ATTR_SUFFIX))
    durable.makedirs_durable(os.path.dirname(data_path), disk.objects)
    for src, dst in moves:
        if os.path.exists(src):
            os.rename(src, dst)
        elif not os.path.exists(dst):
            raise StoreCorrupt(f"committed file {intent['file_id']}: neither {src} nor {dst} "
                               "exists")
    durable.fsync_dir(os.path.dirname(data_path))
    with store.env.write() as txn:
        W.drop_intent(txn, store.env, op_id)
    return "rolled_forward"


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
    disk = store.disks.get(intent["disk"])
    remove_object_files(disk.data_path(intent["rel"]))
    with store.env.read() as txn:
        entry = catalog.get(txn, store.env, intent["file_id"])
    _finish(store, op_id, intent, state=W.COMMITTED, data={"recovered": True}, delete=entry)
    return "rolled_forward"
