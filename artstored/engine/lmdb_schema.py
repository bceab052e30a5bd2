"""Every LMDB sub-database and key layout, in one place, with the schema version.

Environment: ``<data_dir>/store.lmdb/``. Values are msgpack unless said otherwise.

======== ====================================== ==========================================
db       key                                    value
======== ====================================== ==========================================
meta     ascii name                             see META_* below
wal      seq, 8 bytes big-endian                committed WAL record (see ``wal``): the
                                                tail; older records are in sealed segment
                                                files (see ``walseg``)
pending  op id, 16 bytes (uuid)                 PENDING intent (see ``wal``)
catalog  file id, 16 raw UUID bytes             CatalogEntry: {attr, disk, rel}
expiry   expires_at µs 8 BE + file id 16        b"" (temporary files, for the GC)
accounts client_id, UTF-8                       account record (``artstored.auth``)
revoked  token id (jti), UTF-8                  {exp}: revoked before it expired
jobs     job id, 16 bytes (UUIDv7: creation order) job record (see ``jobstore``)
fixity   file id, 16 raw UUID bytes             {last_verified µs, outcome, ...} (``fixity``)
fixorder last_verified µs 8 BE + file id 16     b"": files by their last fixity check
======== ====================================== ==========================================

The catalog is keyed by UUIDv7 bytes, so its key order is creation order (lists need no
second index). ``catalog`` and ``expiry`` are caches of the attr.json files and are
rebuilt from them; ``wal``, ``accounts`` and ``meta`` are not derivable.

Migrations: ``SCHEMA_VERSION`` is stored in meta on creation. Opening a store written by a
newer schema is refused; an older one is migrated by ``MIGRATIONS[old]`` (none yet).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading

import lmdb

from .errors import StoreCorrupt

SCHEMA_VERSION = 1

DB_META = b"meta"
DB_WAL = b"wal"
DB_PENDING = b"pending"
DB_CATALOG = b"catalog"
DB_EXPIRY = b"expiry"
DB_ACCOUNTS = b"accounts"
DB_REVOKED = b"revoked"
DB_JOBS = b"jobs"
DB_FIXITY = b"fixity"
DB_FIXITY_ORDER = b"fixorder"
DB_TOMBSTONES = b"tombstones"   # file id → who deleted it and when: never resurrected
DB_PEERS = b"peers"             # peer node id → how far this node has followed its WAL
DB_BUCKETS = b"buckets"         # bucket name → {name, created_at, created_by} (engine.buckets)
DB_OBJECT_KEYS = b"objkeys"     # bucket NUL key NUL file id → b"": S3 names (engine.buckets)
DB_S3_KEYS = b"s3keys"          # access key id → its account and sealed secret (auth.s3keys)
DB_UPLOADS = b"uploads"         # multipart upload id → its key and parts (engine.multipart)
DB_SESSIONS = b"sessions"       # upload session id → its file's fields, bytes received
ALL_DBS = (DB_META, DB_WAL, DB_PENDING, DB_CATALOG, DB_EXPIRY, DB_ACCOUNTS, DB_REVOKED,
           DB_JOBS, DB_FIXITY, DB_FIXITY_ORDER, DB_TOMBSTONES, DB_PEERS, DB_BUCKETS,
           DB_OBJECT_KEYS, DB_S3_KEYS, DB_UPLOADS, DB_SESSIONS)

META_SCHEMA = b"schema_version"   # msgpack int
META_ELEMENT = b"element"         # {mode, changed_by, changed_at, created_at}
META_WAL_HEAD = b"wal_head"       # {seq, hash}: the newest WAL record and its hash
META_STATS = b"stats"             # {files, bytes}: kept in the same txn as catalog changes
META_WAL_SEALED = b"wal_sealed"  # {through, hash, segments}: the log's sealed part (walseg)
META_NODE_KEYS = b"node_keys"     # {node id: Ed25519 public key} of peers whose files we hold
META_DISKS = b"disks"             # {root path: disk id}: every disk root this store has used

MIGRATIONS: dict[int, callable] = {}

DEFAULT_MAP_SIZE = 1 << 40  # 1 TiB of address space only: data.mdb grows as it is used
# The map is grown before a write transaction once less than this much of it is left (or a
# quarter of it, whichever is more), so no single transaction meets a full map.
GROW_HEADROOM = 64 << 20

log = logging.getLogger("artstored.engine.lmdb")


def seq_key(seq: int) -> bytes:
    return struct.pack(">Q", seq)


def key_seq(key: bytes) -> int:
    return struct.unpack(">Q", bytes(key))[0]


def expiry_key(expires_us: int, file_key: bytes) -> bytes:
    return struct.pack(">Q", max(0, expires_us)) + file_key


def split_expiry_key(key: bytes) -> tuple[int, bytes]:
    key = bytes(key)
    return struct.unpack(">Q", key[:8])[0], key[8:]


class _Gate:
    """Many transactions at once, or one map resize alone (LMDB may resize its map only
    while this process has no transaction open). A thread that holds a transaction never
    waits for a resize: the resize is skipped and tried again before the next write."""

    def __init__(self):
        self._cond = threading.Condition()
        self._active = 0
        self._resizing = False
        self._mine = threading.local()

    @contextlib.contextmanager
    def txn(self):
        depth = getattr(self._mine, "depth", 0)
        with self._cond:
            if depth == 0:
                self._cond.wait_for(lambda: not self._resizing)
            self._active += 1
        self._mine.depth = depth + 1
        try:
            yield
        finally:
            self._mine.depth = depth
            with self._cond:
                self._active -= 1
                if self._active == 0:
                    self._cond.notify_all()

    @property
    def resizing(self) -> bool:
        """Whether a resize waits for the transactions under way (new ones would wait)."""
        return self._resizing

    @contextlib.contextmanager
    def exclusive(self, timeout: float):
        """Yields True with every other transaction in this process finished (new ones
        wait), or False if that did not happen within ``timeout``."""
        if getattr(self._mine, "depth", 0):
            yield False
            return
        with self._cond:
            if self._resizing:
                yield False
                return
            self._resizing = True
            try:
                ok = self._cond.wait_for(lambda: self._active == 0, timeout)
                yield ok
            finally:
                self._resizing = False
                self._cond.notify_all()


class Env:
    """The LMDB environment and its named databases.

    ``readonly=True`` is for other processes (the FUSE mount, offline readers): they see each
    commit on their next read transaction and never block the writer.

    The writer's map grows on demand: ``map_size`` is where it starts; before each write
    transaction the map is doubled when less than ``GROW_HEADROOM`` (or a quarter) is left.
    Readers in other processes pick the new size up on their next transaction.
    """

    def __init__(self, path: str, *, readonly: bool = False, map_size: int = DEFAULT_MAP_SIZE):
        self.path = path
        self.readonly = readonly
        self._gate = _Gate()
        if not readonly:
            os.makedirs(path, exist_ok=True)
        self.env = lmdb.open(
            path, map_size=0 if readonly else map_size, max_dbs=len(ALL_DBS) + 4,
            readonly=readonly, lock=True, subdir=True, metasync=True, sync=True,
            max_readers=256, create=not readonly,
        )
        self.dbs = {name: self.env.open_db(name, create=not readonly) if not readonly
                    else self._open_existing(name) for name in ALL_DBS}
        if not readonly:
            self._check_schema()

    def _open_existing(self, name: bytes):
        # Not inside a read transaction: py-lmdb then hands back a handle that later
        # transactions refuse (EINVAL). Without one it uses a short read-only txn itself.
        # A database a newer daemon added and this store lacks yet reads as absent (None).
        try:
            return self.env.open_db(name, create=False)
        except lmdb.NotFoundError:
            return None

    def db(self, name: bytes):
        return self.dbs[name]

    def _check_schema(self) -> None:
        import msgpack

        with self.env.begin(write=True) as txn:
            raw = txn.get(META_SCHEMA, db=self.dbs[DB_META])
            if raw is None:
                txn.put(META_SCHEMA, msgpack.packb(SCHEMA_VERSION), db=self.dbs[DB_META])
                return
            found = msgpack.unpackb(raw)
            if found > SCHEMA_VERSION:
                raise StoreCorrupt(f"store.lmdb has schema {found}, newer than this "
                                   f"software's {SCHEMA_VERSION}: upgrade ArtStore")
            while found < SCHEMA_VERSION:
                MIGRATIONS[found](txn, self.dbs)
                found += 1
                txn.put(META_SCHEMA, msgpack.packb(found), db=self.dbs[DB_META])

    def used_bytes(self) -> int:
        """Bytes of the map in use (pages up to the last one written)."""
        info = self.env.info()
        return (info["last_pgno"] + 1) * self.env.stat()["psize"]

    def map_size(self) -> int:
        return self.env.info()["map_size"]

    def _grow_if_needed(self) -> None:
        size = self.map_size()
        headroom = max(GROW_HEADROOM, size // 4)
        if size - self.used_bytes() >= headroom:
            return
        with self._gate.exclusive(timeout=5.0) as alone:
            if not alone:
                return  # busy, or called inside a transaction: the next write tries again
            size = self.map_size()
            if size - self.used_bytes() >= max(GROW_HEADROOM, size // 4):
                return
            new = max(size * 2, self.used_bytes() + 2 * GROW_HEADROOM)
            self.env.set_mapsize(new)
            log.info("LMDB map grown from %d to %d bytes", size, new)

    @contextlib.contextmanager
    def write(self):
        """A write transaction: commits when the block ends, aborts if it raises. The map is
        grown first if it is nearly full (see the class docstring)."""
        self._grow_if_needed()
        with self._gate.txn():
            with self.env.begin(write=True) as txn:
                yield txn

    def resize_pending(self) -> bool:
        """Whether a map resize is waiting for the transactions under way: a new one
        started now would wait for it."""
        return self._gate.resizing

    @contextlib.contextmanager
    def read(self):
        """A read transaction: one consistent snapshot for the whole block."""
        with self._gate.txn():
            while True:
                try:
                    txn = self.env.begin(buffers=False)
                    break
                except lmdb.MapResizedError:  # another process grew the map
                    self.env.set_mapsize(0)
            with txn:
                yield txn

    def clear_stale_readers(self) -> int:
        """Free reader slots held by processes that died inside a read transaction (a
        killed mount); returns how many. Stale slots pin old pages, so the file grows."""
        return self.env.reader_check()

    def sync(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        self.env.close()
