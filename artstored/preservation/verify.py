"""``verify``: the catalog against the attr.json sidecars against the data files.

Finds, per catalogued file: a missing data file or sidecar, an unreadable sidecar, a data
file whose size differs, a catalog entry stale against its sidecar (the sidecar is the
source of truth), a signature that does not verify, and with ``deep`` a checksum
mismatch; then, walking each disk, data files without a sidecar and sidecars the catalog
does not know. It reports (counts, and the first ``EXAMPLES`` of each kind) and never
repairs anything. Resumable: the catalog walk's cursor and the counts so far are its
checkpoint.
"""

from __future__ import annotations

import os

from ..engine import attrs as A
from ..engine import layout as L
from ..engine import replica
from ..engine import wal as W
from ..engine.errors import DiskOffline, StoreCorrupt
from ..engine.objectfiles import hash_file
from ..engine.rebuild import orphans, walk_objects

EXAMPLES = 20
PAGE = 500
KINDS = ("data_missing", "sidecar_missing", "sidecar_unreadable", "size_mismatch",
         "checksum_mismatch", "signature_invalid", "catalog_stale", "disk_offline",
         "quarantined", "orphan_data", "orphan_sidecar")


def _note(state: dict, kind: str, file_id: str | None, path: str | None, detail: str) -> None:
    state["problems"][kind] = state["problems"].get(kind, 0) + 1
    examples = state["examples"].setdefault(kind, [])
    if len(examples) < EXAMPLES:
        examples.append({"file_id": file_id, "path": path, "detail": detail})


def check_entry(store, entry, state: dict, *, deep: bool) -> int:
    """Check one catalogued file; notes its problems in ``state``; returns bytes read."""
    fid = entry.file_id
    record = store.view.fixity(fid)
    if record is not None and record.get("quarantine"):
        _note(state, "quarantined", fid, record["quarantine"]["path"],
              record["quarantine"]["reason"])
        return 0
    try:
        data_path = store.content_path(entry)
    except DiskOffline as exc:
        _note(state, "disk_offline", fid, None, str(exc))
        return 0
    attr_path = data_path + L.ATTR_SUFFIX
    try:
        with open(attr_path, "rb") as f:
            sidecar = A.decode(f.read(), source=attr_path)
    except FileNotFoundError:
        if store.committer.placing(fid) is None:
            _note(state, "sidecar_missing", fid, attr_path, "no attr.json beside the data")
        sidecar = None
    except StoreCorrupt as exc:
        _note(state, "sidecar_unreadable", fid, attr_path, str(exc))
        sidecar = None
    try:
        size = os.stat(data_path).st_size
    except FileNotFoundError:
        if store.committer.placing(fid) is None:
            _note(state, "data_missing", fid, data_path, "the data file is missing")
        return 0
    if size != entry.size:
        _note(state, "size_mismatch", fid, data_path,
              f"{size} bytes on disk, {entry.size} recorded")
    if sidecar is not None:
        for field in ("version", "checksum_sha256", "file_size", "description",
                      "custom_attributes"):
            if sidecar.get(field) != entry.attr.get(field):
                _note(state, "catalog_stale", fid, attr_path,
                      f"{field} differs between the catalog and attr.json")
                break
        if not replica.signature_valid(store, sidecar):
            _note(state, "signature_invalid", fid, attr_path,
                  "the node's signature over the fixity payload does not verify")
    read = 0
    if deep and size == entry.size:
        read, sha = hash_file(data_path)
        if sha != entry.attr.get("checksum_sha256"):
            _note(state, "checksum_mismatch", fid, data_path,
                  f"SHA-256 {sha}, recorded {entry.attr.get('checksum_sha256')}")
    return read


def find_orphans(store, state: dict, ctx) -> None:
    """Data files without a sidecar, and sidecars the catalog does not hold."""
    for disk in store.disks.online():
        sidecars = set()
        for rel, attr_path in walk_objects(disk):
            sidecars.add(rel)
            file_id = os.path.basename(rel).rsplit("_", 1)[-1].split(".", 1)[0]
            try:
                with open(attr_path, "rb") as f:
                    file_id = A.decode(f.read(), source=attr_path)["file_id"]
            except (OSError, StoreCorrupt):
                pass
            if store.view.entry(file_id) is None:
                _note(state, "orphan_sidecar", file_id, attr_path,
                      "an attr.json the catalog does not hold")
            ctx.check()
        for path in orphans(disk, sidecars):
            _note(state, "orphan_data", None, path, "a data file without its attr.json")


def run(store, ctx, *, deep: bool = False, actor=None) -> dict:
    """The verify job (see the module docstring); ``ctx`` is a preservation JobContext."""
    state = ctx.checkpoint or {"cursor": None, "checked": 0, "bytes": 0, "problems": {},
                               "examples": {}, "deep": deep}
    deep = state.get("deep", deep)
    total = store.view.stats()["files"]
    cursor = state["cursor"]
    while True:
        entries, cursor = store.view.page(limit=PAGE, cursor=cursor, order="asc")
        for entry in entries:
            state["bytes"] += check_entry(store, entry, state, deep=deep)
            state["checked"] += 1
            ctx.check()
        state["cursor"] = cursor
        ctx.progress(done_files=state["checked"], total_files=total,
                     done_bytes=state["bytes"], checkpoint=state)
        if cursor is None:
            break
    find_orphans(store, state, ctx)
    problems = sum(state["problems"].values())
    report = {"checked": state["checked"], "bytes_read": state["bytes"], "deep": deep,
              "ok": problems == 0, "problems": state["problems"],
              "examples": state["examples"]}
    store.record_event(W.PRESERVATION, actor or W.SYSTEM,
                       {"premis_event_type": "validation",
                        "outcome": "success" if problems == 0 else "failure",
                        "detail": f"verify{' (deep)' if deep else ''}: "
                                  f"{state['checked']} files, {problems} problems",
                        "problems": state["problems"]})
    return report
