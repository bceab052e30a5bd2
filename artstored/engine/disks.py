"""Disk roots and capacity: where a new file goes, and when an element is full.

Each configured root carries an identity file ``.artstore-disk`` (JSON ``{"disk_id"}``), so
the catalog names disks by id and roots can be re-ordered or re-mounted elsewhere.

A root is given an identity only when it is new: it was never seen at that path and holds no
files. A root that had an identity and lost it (the disk is not mounted, so the path now
shows the empty mount point or the parent filesystem), or that holds files without one, is
*offline*: nothing is written there, its files read as DiskOffline, and the daemon says
which root and why. Otherwise uploads would land on the parent filesystem and vanish under
the disk when it is mounted again (Swift's ``mount_check`` guards against the same).

Space is reserved across uploads: each writer claims bytes before it writes them, and what
one upload has claimed and not yet written is not offered to another, so concurrent uploads
together never cross the reserve that each alone would respect.

Capacity status per root comes from thresholds in percent *and* bytes: a level applies when
free space is at or below the smaller of the two (so a 100 TB disk warns at 150 GB free,
not at 15 TB, and a 1 GB disk at 15 %). ``full`` is also the reserve an upload may never
eat into: the daemon never fills a disk to the last byte.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from dataclasses import dataclass

from . import durable
from . import layout as L
from .errors import DiskOffline, StorageFull, StoreCorrupt

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
    offline_reason: str | None = None   # None: online

    @property
    def online(self) -> bool:
        return self.offline_reason is None

    @property
    def objects(self) -> str:
        return os.path.join(self.root, L.OBJECTS)

    @property
    def tmp(self) -> str:
        return os.path.join(self.root, L.TMP)

    def data_path(self, rel: str) -> str:
        """The data file's path; DiskOffline if the disk is not there."""
        if self.offline_reason is not None:
            raise DiskOffline(f"disk {self.disk_id} ({self.root}) is offline: "
                              f"{self.offline_reason}", disk_id=self.disk_id, root=self.root)
        return os.path.join(self.root, L.OBJECTS, rel)

    def space(self) -> tuple[int, int]:
        """(total, free) bytes for unprivileged writers (f_bavail: root's reserve excluded)."""
        st = os.statvfs(self.root)
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def read_identity(root: str) -> str | None:
    """The disk id in ``root``'s identity file, None if there is none; StoreCorrupt if it
    is unreadable."""
    path = os.path.join(root, ID_FILE)
    try:
        with open(path, "rb") as f:
            return json.load(f)["disk_id"]
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreCorrupt(f"{path}: unreadable disk identity: {exc}") from None


def _holds_files(root: str) -> bool:
    for sub in (L.OBJECTS, L.TMP):
        try:
            if os.listdir(os.path.join(root, sub)):
                return True
        except (FileNotFoundError, NotADirectoryError):
            continue
    return False


class DiskSet:
    """The configured disk roots. Thread-safe.

    ``known``: root path → disk id of every root this store has used (kept by the caller
    in LMDB); a known root without its identity file is offline, never re-initialised.
    New roots get an identity; ``registered`` lists them for the caller to record.
    """

    def __init__(self, roots: list[str], thresholds: Thresholds,
                 known: dict[str, str] | None = None):
        if not roots:
            raise ValueError("at least one disk root is needed")
        self.thresholds = thresholds
        self.disks: dict[str, Disk] = {}
        self.registered: dict[str, str] = {}
        self._claims: dict[str, int] = {}
        self._claims_lock = threading.Lock()
        known = known or {}
        for root in roots:
            root = os.path.abspath(root)
            disk = self._open_root(root, known)
            if disk.disk_id in self.disks:
                raise StoreCorrupt(f"{root} and {self.disks[disk.disk_id].root} are the same "
                                   f"disk (both carry id {disk.disk_id})")
            self.disks[disk.disk_id] = disk
            self._claims[disk.disk_id] = 0

    def _open_root(self, root: str, known: dict[str, str]) -> Disk:
        disk_id = read_identity(root)
        if disk_id is None:
            if root in known:
                return self._offline(root, known[root], f"its identity file {ID_FILE} is "
                                     "missing: the disk is probably not mounted")
            if _holds_files(root):
                return self._offline(root, f"unknown:{root}", f"it holds files but no "
                                     f"identity file {ID_FILE}: not an ArtStore disk root, "
                                     "or its identity was lost")
            for sub in (L.OBJECTS, L.TMP):
                os.makedirs(os.path.join(root, sub), exist_ok=True)
            disk_id = uuid.uuid4().hex[:12]
            durable.atomic_write(os.path.join(root, ID_FILE),
                                 json.dumps({"disk_id": disk_id}).encode() + b"\n")
            durable.fsync_dir(os.path.dirname(root))
            self.registered[root] = disk_id
        elif known.get(root) != disk_id:
            self.registered[root] = disk_id   # re-mounted here, or first seen here
        for sub in (L.OBJECTS, L.TMP):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        return Disk(disk_id, root, os.stat(root).st_dev)

    @staticmethod
    def _offline(root: str, disk_id: str, reason: str) -> Disk:
        return Disk(disk_id, root, -1, offline_reason=reason)

    def __iter__(self):
        return iter(self.disks.values())

    def online(self) -> list[Disk]:
        return [d for d in self.disks.values() if d.online]

    def offline(self) -> list[Disk]:
        return [d for d in self.disks.values() if not d.online]

    def get(self, disk_id: str) -> Disk:
        try:
            return self.disks[disk_id]
        except KeyError:
            raise StoreCorrupt(f"disk {disk_id} is not among the configured roots") from None

    def usable(self, disk: Disk) -> int:
        """Bytes a new claim on ``disk`` may still take without crossing the reserve (what
        other uploads claimed and have not written yet is not usable)."""
        if not disk.online:
            return 0
        total, free = disk.space()
        with self._claims_lock:
            claimed = self._claims[disk.disk_id]
        return free - self.thresholds.reserve(total) - claimed

    def claim(self, disk: Disk, nbytes: int) -> bool:
        """Reserve ``nbytes`` on ``disk`` for a write about to happen; False (nothing
        reserved) if that would cross the reserve. Release with ``release`` once the bytes
        are written (they then count in the filesystem's own free space) or abandoned."""
        if nbytes <= 0:
            return True
        if not disk.online:
            return False
        total, free = disk.space()
        with self._claims_lock:
            if free - self.thresholds.reserve(total) - self._claims[disk.disk_id] < nbytes:
                return False
            self._claims[disk.disk_id] += nbytes
        return True

    def release(self, disk: Disk, nbytes: int) -> None:
        if nbytes > 0:
            with self._claims_lock:
                self._claims[disk.disk_id] = max(0, self._claims[disk.disk_id] - nbytes)

    def claimed(self, disk: Disk) -> int:
        with self._claims_lock:
            return self._claims[disk.disk_id]

    def choose(self, expected_size: int = 0) -> tuple[Disk, int]:
        """The online root with the most usable space and that space; DiskOffline if every
        root is offline, StorageFull if none can take ``expected_size`` more bytes."""
        online = self.online()
        if not online:
            raise DiskOffline("every disk root is offline: "
                              + "; ".join(f"{d.root}: {d.offline_reason}"
                                          for d in self.disks.values()))
        best, best_usable = None, -1
        for disk in online:
            u = self.usable(disk)
            if u > best_usable:
                best, best_usable = disk, u
        if best is None or best_usable <= 0 or best_usable < expected_size:
            raise StorageFull(
                "no disk root has room for this upload without crossing its reserve",
                needed=expected_size, available=max(0, best_usable))
        return best, best_usable

    def report(self) -> dict:
        """Per-root and total capacity (roots sharing a filesystem are counted once; an
        offline root is listed with status ``offline`` and its reason)."""
        roots = []
        seen_dev: dict[int, tuple[int, int]] = {}
        for disk in self.disks.values():
            if not disk.online:
                roots.append({"disk_id": disk.disk_id, "path": disk.root, "total_bytes": 0,
                              "used_bytes": 0, "free_bytes": 0, "status": "offline",
                              "reason": disk.offline_reason})
                continue
            total, free = disk.space()
            seen_dev[disk.dev] = (total, free)
            roots.append({
                "disk_id": disk.disk_id, "path": disk.root, "total_bytes": total,
                "used_bytes": total - free, "free_bytes": free,
                "claimed_bytes": self.claimed(disk),
                "status": self.thresholds.status(total, free),
            })
        total = sum(t for t, _ in seen_dev.values())
        free = sum(f for _, f in seen_dev.values())
        status = self.thresholds.status(total, free) if seen_dev else "offline"
        return {"total_bytes": total, "used_bytes": total - free, "free_bytes": free,
                "status": status, "disks": roots}
