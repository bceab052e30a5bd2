"""Rebuilding the catalog from the attr.json files alone (they are the source of truth).

Walks every online disk's ``objects/`` tree, reads each sidecar, checks its data file is
there with the recorded size (and, with ``verify=True``, the recorded SHA-256), and brings
the catalog in line with what it finds. Sidecars without data, unreadable sidecars and data
without a sidecar are not catalogued; they are listed in the report for an operator.

It runs online, beside uploads, PATCHes and DELETEs, in write transactions of at most
``BATCH`` files each, so no writer waits for more than one batch:

1. *refresh*: each batch upserts the entries read from the sidecars. Inside the batch's
   transaction a sidecar that has vanished since it was read is skipped (a DELETE got there
   first), and an entry the catalog holds at a newer version is kept (a PATCH did).
2. *sweep*: catalog entries the walk did not see are removed, in batches, unless their
   files are in ``objects/`` now (committed during the walk) or a ``file.place`` intent
   names them (committed, still in ``tmp/``), or their disk is offline.

Readers see the old catalog, then the corrected one, never an empty or half-built one.
Idempotent; durable when it returns.
"""

from __future__ import annotations

import logging
import os

from . import attrs as A
from . import buckets, catalog, ids
from . import layout as L
from . import lmdb_schema as S
from . import wal as W
from .catalog import CatalogEntry
from .errors import StoreCorrupt
from .objectfiles import hash_file

log = logging.getLogger("artstored.engine.rebuild")

BATCH = 256


def walk_objects(disk):
    """(rel path of data, attr path) for every sidecar under the disk's objects/."""
    root = disk.objects
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if L.is_attr_file(name):
                attr_path = os.path.join(dirpath, name)
                data_rel = os.path.relpath(attr_path, root)[: -len(L.ATTR_SUFFIX)]
                yield data_rel, attr_path


def rebuild_catalog(store, *, verify: bool = False, progress=None,
                    actor: W.Actor = W.SYSTEM, batch: int = BATCH) -> dict:
    """Bring the catalog in line with the sidecars; returns a report. See the module
    docstring for what concurrent writers may rely on."""
    env = store.env
    report = {"files": 0, "bytes": 0, "removed": 0, "missing_data": [], "size_mismatch": [],
              "checksum_mismatch": [], "unreadable": [], "orphan_data": []}
    seen: set[bytes] = set()
    for disk in store.disks.online():
        attr_rels = set()
        pending: list[tuple[CatalogEntry, str]] = []
        for rel, attr_path in walk_objects(disk):
            attr_rels.add(rel)
            entry = _entry_for(disk, rel, attr_path, verify, report)
            if entry is not None:
                pending.append((entry, attr_path))
            if len(pending) >= batch:
                _refresh(store, pending, seen, report, progress)
                pending = []
        _refresh(store, pending, seen, report, progress)
        report["orphan_data"].extend(orphans(disk, attr_rels))
    report["removed"] = _sweep(store, seen, batch)
    with env.write() as txn:
        W.append(txn, env, W.CATALOG_REBUILD, actor,
                 data={"files": report["files"], "bytes": report["bytes"],
                       "removed": report["removed"]})
    store.notify_committed()
    log.info("catalog rebuilt: %d files, %d bytes, %d stale entries removed",
             report["files"], report["bytes"], report["removed"])
    return report


def _refresh(store, pending, seen: set, report: dict, progress) -> None:
    if not pending:
        return
    env = store.env
    with env.write() as txn:
        for entry, attr_path in pending:
            if not os.path.exists(attr_path):
                continue  # deleted since it was read
            key = ids.file_id_key(entry.file_id)
            current = catalog.get(txn, env, entry.file_id)
            if current is None or current.attr.get("version", 0) <= entry.attr["version"] \
                    or current.rel != entry.rel:
                catalog.put(txn, env, entry)
            # A bucket named by a sidecar comes back with it (the store may be new).
            buckets.ensure(txn, env, entry.attr)
            seen.add(key)
            report["files"] += 1
            report["bytes"] += entry.size
    if progress:
        progress(report["files"])


def _sweep(store, seen: set, batch: int) -> int:
    """Remove catalog entries the walk did not find (see the module docstring)."""
    env = store.env
    with env.read() as txn:
        unseen = [ids.key_file_id(bytes(k)) for k in _catalog_keys(txn, env)
                  if bytes(k) not in seen]
    removed = 0
    for start in range(0, len(unseen), batch):
        with env.write() as txn:
            for file_id in unseen[start:start + batch]:
                entry = catalog.get(txn, env, file_id)
                if entry is None or _still_there(store, txn, entry):
                    continue
                catalog.delete(txn, env, entry)
                removed += 1
    return removed


def _catalog_keys(txn, env):
    cur = txn.cursor(db=env.db(S.DB_CATALOG))
    return cur.iternext(keys=True, values=False)


def _still_there(store, txn, entry: CatalogEntry) -> bool:
    disk = store.disks.disks.get(entry.disk)
    if disk is None:
        return False
    if not disk.online:
        return True  # cannot look: keep it until the disk is back
    if txn.get(ids.file_id_key(entry.file_id), db=store.env.db(S.DB_PENDING)) is not None:
        return True  # committed, on its way from tmp/ into objects/
    data_path = disk.data_path(entry.rel)
    return os.path.exists(data_path) and os.path.exists(data_path + L.ATTR_SUFFIX)


def _entry_for(disk, rel: str, attr_path: str, verify: bool, report: dict):
    try:
        with open(attr_path, "rb") as f:
            attr = A.decode(f.read(), source=attr_path)
    except FileNotFoundError:
        return None  # deleted while we walked
    except (OSError, StoreCorrupt) as exc:
        report["unreadable"].append({"path": attr_path, "error": str(exc)})
        return None
    data_path = disk.data_path(rel)
    try:
        size = os.stat(data_path).st_size
    except FileNotFoundError:
        report["missing_data"].append(attr["file_id"])
        return None
    if size != attr["file_size"]:
        report["size_mismatch"].append(attr["file_id"])
        return None
    if verify and hash_file(data_path)[1] != attr["checksum_sha256"]:
        report["checksum_mismatch"].append(attr["file_id"])
        return None
    return CatalogEntry(attr=attr, disk=disk.disk_id, rel=rel)


def orphans(disk, attr_rels: set[str]) -> list[str]:
    """Paths of data files under the disk's objects/ whose rel path has no sidecar."""
    out = []
    for dirpath, _, filenames in os.walk(disk.objects):
        for name in filenames:
            if name.startswith(".") or name.endswith(L.ATTR_SUFFIX):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), disk.objects)
            if rel not in attr_rels:
                out.append(os.path.join(disk.objects, rel))
    return out
