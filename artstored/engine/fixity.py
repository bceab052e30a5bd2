"""Fixity records: when each stored file's bytes were last re-hashed, what was found, and
whether the file is in quarantine.

``fixity``: file key → {last_verified (µs), outcome, bytes, detail, quarantine}; ``fixorder``:
(last_verified µs, file key) → b"", so a scrub takes the files checked longest ago first.
Both change only inside a caller's write transaction, together with the WAL record of the
check (a PREMIS ``fixity check`` event); a file's records go when its catalog entry does.

Quarantine moves a damaged file's data and sidecar aside, to ``<disk>/quarantine/<file
id>/`` on the same filesystem, and never deletes them: the record says where, and every
read of the file answers ``Quarantined`` (in a cluster, a replica repairs it).
"""

from __future__ import annotations

import logging
import os
import time

from . import durable, ids
from . import layout as L
from . import lmdb_schema as S
from . import wal as W
from .errors import StoreCorrupt

log = logging.getLogger("artstored.engine.fixity")

OK, CORRUPT, MISSING = "ok", "corrupt", "missing"
QUARANTINE = "quarantine"
PRESERVATION = W.PRESERVATION


class Quarantined(StoreCorrupt):
    """The file's bytes failed a fixity check and were moved aside; nothing reads them."""

    code = "file_quarantined"
    status = 409
    title = "The file is in quarantine"


def _order_key(last_us: int, file_key: bytes) -> bytes:
    return S.seq_key(last_us) + file_key


def get(txn, env: S.Env, file_id: str) -> dict | None:
    db = env.db(S.DB_FIXITY)
    if db is None:
        return None
    try:
        key = ids.file_id_key(file_id)
    except Exception:
        return None
    raw = txn.get(key, db=db)
    return W.unpack(raw) if raw is not None else None


def put(txn, env: S.Env, file_id: str, record: dict) -> None:
    """Replace ``file_id``'s fixity record (and its place in the scrub order)."""
    key = ids.file_id_key(file_id)
    old = get(txn, env, file_id)
    if old is not None:
        txn.delete(_order_key(old["last_verified"], key), db=env.db(S.DB_FIXITY_ORDER))
    txn.put(key, W.pack(record), db=env.db(S.DB_FIXITY))
    if not record.get("quarantine"):
        txn.put(_order_key(record["last_verified"], key), b"", db=env.db(S.DB_FIXITY_ORDER))


def drop(txn, env: S.Env, file_id: str) -> None:
    """Forget a file's fixity (its catalog entry is going)."""
    old = get(txn, env, file_id)
    if old is None:
        return
    key = ids.file_id_key(file_id)
    txn.delete(key, db=env.db(S.DB_FIXITY))
    txn.delete(_order_key(old["last_verified"], key), db=env.db(S.DB_FIXITY_ORDER))


def oldest(txn, env: S.Env, before_us: int, limit: int) -> list[str]:
    """Ids of files last verified before ``before_us``, the oldest check first."""
    out = []
    db = env.db(S.DB_FIXITY_ORDER)
    if db is None:
        return out
    cur = txn.cursor(db=db)
    for key, _ in cur:
        key = bytes(key)
        if S.key_seq(key[:8]) >= before_us or len(out) >= limit:
            break
        out.append(ids.key_file_id(key[8:]))
    return out


def checked(store, results: list[tuple[str, dict]], also=None) -> None:
    """Record fixity checks, each with its PREMIS ``fixity check`` event; one durable
    transaction for the lot, in which ``also(txn)`` runs too (a job's checkpoint).
    ``results``: (file_id, record) with outcome ``ok``."""
    if not results and also is None:
        return
    env = store.env
    with env.write() as txn:
        if also is not None:
            also(txn)
        for file_id, record in results:
            if txn.get(ids.file_id_key(file_id), db=env.db(S.DB_CATALOG)) is None:
                continue  # deleted meanwhile
            put(txn, env, file_id, record)
            W.append(txn, env, PRESERVATION, W.SYSTEM, file_id=file_id,
                     data={"premis_event_type": "fixity check", "outcome": record["outcome"],
                           "bytes": record.get("bytes"), "detail": record.get("detail")})
    store.notify_committed()


def quarantine(store, entry, outcome: str, detail: str) -> dict:
    """Move a damaged file's data and sidecar into ``<disk>/quarantine/<file id>/`` and
    record it (fixity record + PREMIS events ``fixity check`` failed and ``quarantine``).
    Nothing is deleted. Durable when it returns; returns the fixity record."""
    disk = store.disks.get(entry.disk)
    data_path = disk.data_path(entry.rel)
    folder = os.path.join(disk.root, QUARANTINE, entry.file_id)
    os.makedirs(folder, exist_ok=True)
    moved = []
    with store.file_lock(entry.file_id):
        for path in (data_path, data_path + L.ATTR_SUFFIX):
            if os.path.exists(path):
                target = os.path.join(folder, os.path.basename(path))
                os.rename(path, target)
                moved.append(target)
        durable.fsync_dir(folder)
        durable.fsync_dir(os.path.dirname(data_path))
        durable.fsync_dir(os.path.dirname(folder))
        now_us = time.time_ns() // 1000
        record = {"last_verified": now_us, "outcome": outcome, "detail": detail,
                  "quarantine": {"at": now_us, "reason": detail, "path": folder,
                                 "files": [os.path.basename(p) for p in moved]}}
        env = store.env
        with env.write() as txn:
            put(txn, env, entry.file_id, record)
            W.append(txn, env, PRESERVATION, W.SYSTEM, file_id=entry.file_id,
                     data={"premis_event_type": "fixity check", "outcome": "failure",
                           "detail": detail})
            W.append(txn, env, PRESERVATION, W.SYSTEM, file_id=entry.file_id,
                     data={"premis_event_type": "quarantine", "outcome": "success",
                           "detail": f"moved to {folder}"})
    store.notify_committed()
    for listener in store.quarantine_listeners:
        try:
            listener(entry.file_id)   # a cluster fetches a good copy from another node
        except Exception:  # the quarantine is done and durable; a listener's bug is not ours
            log.exception("quarantine listener failed")
    return record


def restore(store, entry, writer, *, source: str) -> dict:
    """Put a good copy back in place of a quarantined file: ``writer`` (an UploadWriter on
    ``entry``'s disk, finished) holds bytes fetched from ``source`` (another node). Checks
    size and SHA-256 against the catalog (ChecksumMismatch / StoreCorrupt otherwise, the
    caller aborts the writer), moves them into objects/ with the catalog's sidecar, and
    records PREMIS ``replication`` and ``fixity check`` events; the quarantined copy stays
    where it is. Durable when it returns; returns the new fixity record."""
    from .attrs import encode
    from .errors import ChecksumMismatch
    if writer.size != entry.size or writer.sha256_hex != entry.attr.get("checksum_sha256"):
        raise ChecksumMismatch(f"the copy of {entry.file_id} from {source} does not match "
                               "its record")
    if writer.disk.disk_id != entry.disk:
        raise StoreCorrupt("a restored copy must be written on the file's own disk")
    disk = store.disks.get(entry.disk)
    data_path = disk.data_path(entry.rel)
    with store.file_lock(entry.file_id):
        with store.env.read() as txn:
            old = get(txn, store.env, entry.file_id)
        if old is None or not old.get("quarantine"):
            raise StoreCorrupt(f"{entry.file_id} is not in quarantine")
        durable.fsync_file(writer.tmp_path)
        durable.makedirs_durable(os.path.dirname(data_path), disk.objects)
        durable.atomic_write(data_path + L.ATTR_SUFFIX, encode(entry.attr))
        os.rename(writer.tmp_path, data_path)
        durable.fsync_dir(os.path.dirname(data_path))
        now_us = time.time_ns() // 1000
        record = {"last_verified": now_us, "outcome": OK, "bytes": entry.size,
                  "detail": f"restored from {source}",
                  "restored": {"at": now_us, "from": source,
                               "quarantined": old["quarantine"]}}
        env = store.env
        with env.write() as txn:
            put(txn, env, entry.file_id, record)
            W.append(txn, env, PRESERVATION, W.SYSTEM, file_id=entry.file_id,
                     data={"premis_event_type": "replication", "outcome": "success",
                           "detail": f"damaged copy replaced with a verified copy from "
                                     f"{source}"})
            W.append(txn, env, PRESERVATION, W.SYSTEM, file_id=entry.file_id,
                     data={"premis_event_type": "fixity check", "outcome": OK,
                           "bytes": entry.size, "detail": "after restoration"})
    store.notify_committed()
    return record


def quarantined(store) -> list[str]:
    """Ids of the files in quarantine (a scan of the fixity records)."""
    out = []
    with store.env.read() as txn:
        db = store.env.db(S.DB_FIXITY)
        if db is None:
            return out
        for key, raw in txn.cursor(db=db):
            if W.unpack(raw).get("quarantine"):
                out.append(ids.key_file_id(bytes(key)))
    return out
