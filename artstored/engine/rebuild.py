"""Rebuilding the catalog from the attr.json files alone (they are the source of truth).

Walks every disk's ``objects/`` tree, reads each sidecar, checks its data file is there with
the recorded size (and, with ``verify=True``, the recorded SHA-256), and writes a fresh
catalog. Sidecars without data, unreadable sidecars and data without a sidecar are not
catalogued; they are listed in the report for an operator to look at.
"""

from __future__ import annotations

import logging
import os

from . import attrs as A
from . import catalog
from . import layout as L
from . import wal as W
from .catalog import CatalogEntry
from .errors import StoreCorrupt
from .objectfiles import hash_file

log = logging.getLogger("artstored.engine.rebuild")

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
                    actor: W.Actor = W.SYSTEM) -> dict:
    """Replace the catalog with what the sidecars say; returns a report.

    One write transaction: readers see the old catalog until it commits, then the new one,
    never a half-built one. Durable when it returns.
    """
    env = store.env
    report = {"files": 0, "bytes": 0, "missing_data": [], "size_mismatch": [],
              "checksum_mismatch": [], "unreadable": [], "orphan_data": []}
    with env.write() as txn:
        catalog.clear(txn, env)
        for disk in store.disks:
            attr_rels = set()
            for rel, attr_path in walk_objects(disk):
                attr_rels.add(rel)
                entry = _entry_for(disk, rel, attr_path, verify, report)
                if entry is None:
                    continue
                catalog.put(txn, env, entry)
                report["files"] += 1
                report["bytes"] += entry.size
                if progress:
                    progress(report["files"])
            report["orphan_data"].extend(_orphans(disk, attr_rels))
        W.append(txn, env, W.CATALOG_REBUILD, actor,
                 data={"files": report["files"], "bytes": report["bytes"]})
    store.notify_committed()
    log.info("catalog rebuilt: %d files, %d bytes", report["files"], report["bytes"])
    return report


def _entry_for(disk, rel: str, attr_path: str, verify: bool, report: dict):
    try:
        with open(attr_path, "rb") as f:
            attr = A.decode(f.read(), source=attr_path)
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


def _orphans(disk, attr_rels: set[str]) -> list[str]:
    out = []
    for dirpath, _, filenames in os.walk(disk.objects):
        for name in filenames:
            if name.startswith(".") or name.endswith(L.ATTR_SUFFIX):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), disk.objects)
            if rel not in attr_rels:
                out.append(os.path.join(disk.objects, rel))
    return out
