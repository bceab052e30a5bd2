"""Disk roots and capacity: where a new file goes, and when an element is full.

Each configured root carries an identity file ``.artstore-disk`` (JSON ``{"disk_id"}``), so
the catalog names disks by id and roots can be re-ordered or re-mounted elsewhere.

Capacity status per root comes from thresholds in percent *and* bytes: a level applies when
free space is at or below the smaller of the two (so a 100 TB disk warns at 150 GB free,
not at 15 TB, and a 1 GB disk at 15 %). ``full`` is also the reserve an upload may never
eat into: the daemon never fills a disk to the last byte.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass

from . import durable
from . import layout as L
from .errors import StorageFull, StoreCorrupt

GB = 1000 ** 3
ID_FILE = ".artstore-disk"

OK, WARNING, CRITICAL, FULL = "ok", "warning", "critical", "full"
LEVELS = (FULL, CRITICAL, WARNING)  # most severe first


@dataclass(frozen=True)
class Thresholds:
    """Free-space thresholds: (percent, bytes) for each level."""

    warning: tuple[float, int]
    critical: tuple[float, int]
    full: tuple[float, int]

    def limit(self, level: str, total: int) -> int:
        pct, absolute = getattr(self, level)
        return int(min(total * pct / 100.0, absolute))

    def status(self, total: int, free: int) -> str:
        for level in LEVELS:
            if free <= self.limit(level, total):
                return level
        return OK

    def reserve(self, total: int) -> int:
        return self.limit(FULL, total)


DEFAULT_THRESHOLDS = {
    "rw": Thresholds(warning=(15, 150 * GB), critical=(8, 80 * GB), full=(2, 20 * GB)),
    "edit": Thresholds(warning=(10, 100 * GB), critical=(5, 50 * GB), full=(1, 10 * GB)),
}


def thresholds_for(mode: str, overrides: dict | None = None) -> Thresholds:
    base = DEFAULT_THRESHOLDS["edit" if mode == "edit" else "rw"]
    return overrides.get(mode, base) if overrides else base


@dataclass(eq=False)  # identity: one object per root, usable in sets
class Disk:
    disk_id: str
    root: str
    dev: int

    @property
    def objects(self) -> str:
        return os.path.join(self.root, L.OBJECTS)

    @property
    def tmp(self) -> str:
        return os.path.join(self.root, L.TMP)

    def data_path(self, rel: str) -> str:
        return os.path.join(self.root, L.OBJECTS, rel)

    def space(self) -> tuple[int, int]:
        """(total, free) bytes for unprivileged writers (f_bavail: root's reserve excluded)."""
        st = os.statvfs(self.root)
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def _load_or_create_id(root: str) -> str:
    path = os.path.join(root, ID_FILE)
    try:
        with open(path, "rb") as f:
            return json.load(f)["disk_id"]
    except FileNotFoundError:
        pass
    except (ValueError, KeyError) as exc:
        raise StoreCorrupt(f"{path}: unreadable disk identity: {exc}") from None
    disk_id = uuid.uuid4().hex[:12]
    durable.atomic_write(path, json.dumps({"disk_id": disk_id}).encode() + b"\n")
    return disk_id


class DiskSet:
    """The configured disk roots. Thread-safe."""

    def __init__(self, roots: list[str], thresholds: Thresholds):
        if not roots:
            raise ValueError("at least one disk root is needed")
        self.thresholds = thresholds
        self.disks: dict[str, Disk] = {}
        for root in roots:
            root = os.path.abspath(root)
            for sub in (L.OBJECTS, L.TMP):
                os.makedirs(os.path.join(root, sub), exist_ok=True)
            disk_id = _load_or_create_id(root)
            if disk_id in self.disks:
                raise StoreCorrupt(f"{root} and {self.disks[disk_id].root} are the same disk "
                                   f"(both carry id {disk_id})")
            self.disks[disk_id] = Disk(disk_id, root, os.stat(root).st_dev)

    def __iter__(self):
        return iter(self.disks.values())

    def get(self, disk_id: str) -> Disk:
        try:
            return self.disks[disk_id]
        except KeyError:
            raise StoreCorrupt(f"disk {disk_id} is not among the configured roots") from None

    def usable(self, disk: Disk) -> int:
        """Bytes a new upload may still write to ``disk`` without crossing the reserve."""
        total, free = disk.space()
        return free - self.thresholds.reserve(total)

    def choose(self, expected_size: int = 0) -> tuple[Disk, int]:
        """The root with the most usable space and that space; StorageFull if none can
        take ``expected_size`` more bytes."""
        best, best_usable = None, -1
        for disk in self.disks.values():
            u = self.usable(disk)
            if u > best_usable:
                best, best_usable = disk, u
        if best is None or best_usable <= 0 or best_usable < expected_size:
            raise StorageFull(
                "no disk root has room for this upload without crossing its reserve",
                needed=expected_size, available=max(0, best_usable))
        return best, best_usable

    def report(self) -> dict:
        """Per-root and total capacity (roots sharing a filesystem are counted once)."""
        roots = []
        seen_dev: dict[int, tuple[int, int]] = {}
        for disk in self.disks.values():
            total, free = disk.space()
            seen_dev[disk.dev] = (total, free)
            roots.append({
                "disk_id": disk.disk_id, "path": disk.root, "total_bytes": total,
                "used_bytes": total - free, "free_bytes": free,
                "status": self.thresholds.status(total, free),
            })
        total = sum(t for t, _ in seen_dev.values())
        free = sum(f for _, f in seen_dev.values())
        return {"total_bytes": total, "used_bytes": total - free, "free_bytes": free,
                "status": self.thresholds.status(total, free), "disks": roots}
