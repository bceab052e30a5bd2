"""The catalog: file id → (attr record, disk, relative path), a cache of the attr.json files.

All functions work inside a caller's LMDB transaction, so a catalog change always commits
together with its WAL record. Keys are UUIDv7 bytes: key order is creation order.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import attrs as A
from . import buckets, fixity, ids
from . import lmdb_schema as S
from .errors import BadRequest
from .wal import pack, unpack


@dataclass(frozen=True)
class CatalogEntry:
    attr: dict
    disk: str   # disk id (see ``disks``), not a path: roots may move or be reordered
    rel: str    # data file path relative to the disk's objects/

    @property
    def file_id(self) -> str:
        return self.attr["file_id"]

    @property
    def size(self) -> int:
        return int(self.attr["file_size"])

    def encode(self) -> bytes:
        return pack({"attr": self.attr, "disk": self.disk, "rel": self.rel})

    @classmethod
    def decode(cls, raw: bytes) -> "CatalogEntry":
        d = unpack(raw)
        return cls(attr=d["attr"], disk=d["disk"], rel=d["rel"])


def get(txn, env: S.Env, file_id: str) -> CatalogEntry | None:
    raw = txn.get(ids.file_id_key(file_id), db=env.db(S.DB_CATALOG))
    return CatalogEntry.decode(raw) if raw is not None else None


def _expires_us(attr: dict) -> int | None:
    exp = attr.get("expires_at")
    if not exp:
        return None
    return int(A.parse_time(exp).timestamp() * 1_000_000)


def _empty_stats() -> dict:
    return {"files": 0, "bytes": 0, "by_retention": {}}


def _stats(txn, env: S.Env) -> dict:
    raw = txn.get(S.META_STATS, db=env.db(S.DB_META))
    st = unpack(raw) if raw else _empty_stats()
    st.setdefault("by_retention", {})
    return st


def _count(st: dict, attr: dict, sign: int) -> None:
    policy = attr.get("retention_policy") or "permanent"
    st["by_retention"][policy] = st["by_retention"].get(policy, 0) + sign


def stats(txn, env: S.Env) -> dict:
    """{files, bytes, by_retention: {policy: files}} of the catalogued files."""
    return _stats(txn, env)


def put(txn, env: S.Env, entry: CatalogEntry) -> None:
    """Insert or replace ``entry``; keeps the expiry index and the stats in step."""
    key = ids.file_id_key(entry.file_id)
    old_raw = txn.get(key, db=env.db(S.DB_CATALOG))
    st = _stats(txn, env)
    if old_raw is not None:
        old = CatalogEntry.decode(old_raw)
        _drop_expiry(txn, env, key, old.attr)
        st["files"] -= 1
        st["bytes"] -= old.size
        _count(st, old.attr, -1)
        buckets.unindex(txn, env, old.attr)
    txn.put(key, entry.encode(), db=env.db(S.DB_CATALOG))
    buckets.index(txn, env, entry.attr)
    exp = _expires_us(entry.attr)
    if exp is not None:
        txn.put(S.expiry_key(exp, key), b"", db=env.db(S.DB_EXPIRY))
    st["files"] += 1
    st["bytes"] += entry.size
    _count(st, entry.attr, +1)
    txn.put(S.META_STATS, pack(st), db=env.db(S.DB_META))


def delete(txn, env: S.Env, entry: CatalogEntry) -> None:
    key = ids.file_id_key(entry.file_id)
    fixity.drop(txn, env, entry.file_id)
    if txn.delete(key, db=env.db(S.DB_CATALOG)):
        _drop_expiry(txn, env, key, entry.attr)
        buckets.unindex(txn, env, entry.attr)
        st = _stats(txn, env)
        st["files"] -= 1
        st["bytes"] -= entry.size
        _count(st, entry.attr, -1)
        txn.put(S.META_STATS, pack(st), db=env.db(S.DB_META))


def _drop_expiry(txn, env: S.Env, key: bytes, attr: dict) -> None:
    exp = _expires_us(attr)
    if exp is not None:
        txn.delete(S.expiry_key(exp, key), db=env.db(S.DB_EXPIRY))


def clear(txn, env: S.Env) -> None:
    """Empty the catalog and the expiry index (before a rebuild)."""
    txn.drop(env.db(S.DB_CATALOG), delete=False)
    txn.drop(env.db(S.DB_EXPIRY), delete=False)
    buckets.clear(txn, env)
    txn.put(S.META_STATS, pack(_empty_stats()), db=env.db(S.DB_META))


def expired(txn, env: S.Env, now_us: int, limit: int = 1000) -> list[str]:
    """Ids of files whose ``expires_at`` is at or before ``now_us``, oldest first."""
    out = []
    cur = txn.cursor(db=env.db(S.DB_EXPIRY))
    for key, _ in cur:
        exp, file_key = S.split_expiry_key(key)
        if exp > now_us or len(out) >= limit:
            break
        out.append(ids.key_file_id(file_key))
    return out


def iterate(txn, env: S.Env):
    """Every entry in creation order."""
    cur = txn.cursor(db=env.db(S.DB_CATALOG))
    for _, raw in cur:
        yield CatalogEntry.decode(raw)


# --- listing with cursors ------------------------------------------------------------------

ASC, DESC = "asc", "desc"


def encode_cursor(file_id: str, order: str) -> str:
    return f"{order[0]}{file_id}"


def decode_cursor(cursor: str, order: str) -> bytes:
    """The key after which the page continues; BadRequest (invalid_cursor) if malformed or
    made for the other order."""
    if not cursor or cursor[0] != order[0] or not ids.is_file_id(cursor[1:]):
        raise BadRequest(f"invalid cursor {cursor[:60]!r}", code="invalid_cursor")
    return ids.file_id_key(cursor[1:])


def page(txn, env: S.Env, *, limit: int, cursor: str | None = None,
         order: str = DESC) -> tuple[list[CatalogEntry], str | None]:
    """One page of entries in creation order (``asc``) or newest first (``desc``).

    The cursor names the last entry returned, so a walk stays correct while files are
    added or removed: no entry is returned twice, and none that existed for the whole walk
    is skipped.
    """
    cur = txn.cursor(db=env.db(S.DB_CATALOG))
    after = decode_cursor(cursor, order) if cursor else None
    items: list[CatalogEntry] = []
    if order == ASC:
        positioned = cur.set_range(after) if after else cur.first()
        if positioned and after and bytes(cur.key()) == after:
            positioned = cur.next()
        while positioned and len(items) < limit:
            items.append(CatalogEntry.decode(cur.value()))
            positioned = cur.next()
    else:
        if after:
            positioned = cur.set_range(after)
            # set_range lands on the first key >= after; step back below it.
            positioned = cur.prev() if positioned else cur.last()
        else:
            positioned = cur.last()
        while positioned and len(items) < limit:
            items.append(CatalogEntry.decode(cur.value()))
            positioned = cur.prev()
    next_cursor = encode_cursor(items[-1].file_id, order) if (positioned and items) else None
    return items, next_cursor
