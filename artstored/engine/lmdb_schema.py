"""Every LMDB sub-database and key layout, in one place, with the schema version.

Environment: ``<data_dir>/store.lmdb/``. Values are msgpack unless said otherwise.

======== ====================================== ==========================================
db       key                                    value
======== ====================================== ==========================================
meta     ascii name                             see META_* below
wal      seq, 8 bytes big-endian                committed WAL record (see ``wal``)
pending  op id, 16 bytes (uuid)                 PENDING intent (see ``wal``)
catalog  file id, 16 raw UUID bytes             CatalogEntry: {attr, disk, rel}
expiry   expires_at µs 8 BE + file id 16        b"" (temporary files, for the GC)
accounts client_id, UTF-8                       account record (``artstored.auth``)
revoked  token id (jti), UTF-8                  {exp}: revoked before it expired
======== ====================================== ==========================================

The catalog is keyed by UUIDv7 bytes, so its key order is creation order (lists need no
second index). ``catalog`` and ``expiry`` are caches of the attr.json files and are
rebuilt from them; ``wal``, ``accounts`` and ``meta`` are not derivable.

Migrations: ``SCHEMA_VERSION`` is stored in meta on creation. Opening a store written by a
newer schema is refused; an older one is migrated by ``MIGRATIONS[old]`` (none yet).
"""

from __future__ import annotations

import os
import struct

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
ALL_DBS = (DB_META, DB_WAL, DB_PENDING, DB_CATALOG, DB_EXPIRY, DB_ACCOUNTS, DB_REVOKED)

META_SCHEMA = b"schema_version"   # msgpack int
META_ELEMENT = b"element"         # {mode, changed_by, changed_at, created_at}
META_WAL_HEAD = b"wal_head"       # {seq, hash}: the newest WAL record and its hash
META_STATS = b"stats"             # {files, bytes}: kept in the same txn as catalog changes

MIGRATIONS: dict[int, callable] = {}

DEFAULT_MAP_SIZE = 1 << 40  # 1 TiB of address space only: data.mdb grows as it is used


def seq_key(seq: int) -> bytes:
    return struct.pack(">Q", seq)


def key_seq(key: bytes) -> int:
    return struct.unpack(">Q", bytes(key))[0]


def expiry_key(expires_us: int, file_key: bytes) -> bytes:
    return struct.pack(">Q", max(0, expires_us)) + file_key


def split_expiry_key(key: bytes) -> tuple[int, bytes]:
    key = bytes(key)
    return struct.unpack(">Q", key[:8])[0], key[8:]


class Env:
    """The LMDB environment and its named databases.

    ``readonly=True`` is for other processes (the FUSE mount, offline readers): they see each
    commit on their next read transaction and never block the writer.
    """

    def __init__(self, path: str, *, readonly: bool = False, map_size: int = DEFAULT_MAP_SIZE):
        self.path = path
        self.readonly = readonly
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

    def write(self):
        """A write transaction (MapFullError past ``map_size``: ``storage.lmdb_map_size``)."""
        return self.env.begin(write=True)

    def read(self):
        return self.env.begin(buffers=False)

    def sync(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        self.env.close()
