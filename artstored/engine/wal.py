"""The write-ahead log: intents (PENDING) and the append-only log of what happened.

An operation that touches files first records a PENDING intent (``pending`` db, keyed by an
op id) in a durable transaction. When it finishes, one transaction removes the intent and
appends a record in state COMMITTED (or ROLLED_BACK) to ``wal`` with the next sequence
number, together with the catalog change. So ``wal`` is in commit order, gap-free and
append-only: the index and replication follow it by sequence number without ever waiting
on a slow upload, and a crash leaves at most PENDING intents, which recovery resolves.

The log is a hash chain. A stored record is ``body || sha256(body)``: the body is a msgpack
map that carries ``prev``, the hash of the record before it, and ``meta.wal_head`` holds the
newest sequence and hash. Changing any byte of a record breaks its own hash, and replacing a
whole record breaks the next one's ``prev`` (``verify_chain`` names the record).

Body (msgpack map): ``seq``, ``ts`` (µs since epoch), ``kind`` (see KINDS), ``state``,
``actor`` ({id, name}), ``file_id`` (or None), ``data`` (kind-specific), ``prev``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import msgpack

from . import lmdb_schema as S

PENDING, COMMITTED, ROLLED_BACK = "PENDING", "COMMITTED", "ROLLED_BACK"

# The record state machine: an intent is PENDING until exactly one of these.
STATE_TRANSITIONS = {PENDING: (COMMITTED, ROLLED_BACK), COMMITTED: (), ROLLED_BACK: ()}

FILE_CREATE = "file.create"
FILE_PLACE = "file.place"      # intent only: a committed upload's move from tmp/ to objects/
FILE_UPDATE = "file.update"
FILE_DELETE = "file.delete"
ELEMENT_MODE = "element.mode"
ACCOUNT_CREATE = "account.create"
ACCOUNT_UPDATE = "account.update"
AUTH_FAILURE = "auth.failure"   # a sign-in that failed (never with the secret)
AUTH_LOCKOUT = "auth.lockout"   # sign-ins refused for a while after repeated failures
KEYS_ROTATE = "keys.rotate"
CATALOG_REBUILD = "catalog.rebuild"
KINDS = (FILE_CREATE, FILE_UPDATE, FILE_DELETE, ELEMENT_MODE, ACCOUNT_CREATE,
         ACCOUNT_UPDATE, AUTH_FAILURE, AUTH_LOCKOUT, KEYS_ROTATE, CATALOG_REBUILD)

GENESIS = b"\x00" * 32
HASH_BYTES = 32


def now_us() -> int:
    return time.time_ns() // 1000


def pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(raw: bytes):
    return msgpack.unpackb(raw, raw=False)


@dataclass
class Actor:
    """Who did it: an account (client id + name) or the system itself."""

    id: str
    name: str
    role: str = "system"

    def as_dict(self) -> dict:
        return {"id": self.id, "name": self.name}


SYSTEM = Actor("system", "system", "admin")


# --- intents ---------------------------------------------------------------------------------


def put_intent(txn, env: S.Env, op_id: bytes, kind: str, actor: Actor, **data) -> None:
    """Record a PENDING intent inside ``txn``; durable when ``txn`` commits."""
    record = {"kind": kind, "state": PENDING, "ts": now_us(), "actor": actor.as_dict(),
              **data}
    txn.put(op_id, pack(record), db=env.db(S.DB_PENDING))


def drop_intent(txn, env: S.Env, op_id: bytes) -> None:
    txn.delete(op_id, db=env.db(S.DB_PENDING))


def intents(txn, env: S.Env) -> list[tuple[bytes, dict]]:
    cur = txn.cursor(db=env.db(S.DB_PENDING))
    return [(bytes(k), unpack(v)) for k, v in cur]


# --- the log ---------------------------------------------------------------------------------


def head(txn, env: S.Env) -> tuple[int, bytes]:
    raw = txn.get(S.META_WAL_HEAD, db=env.db(S.DB_META))
    if raw is None:
        return 0, GENESIS
    h = unpack(raw)
    return h["seq"], h["hash"]


def append(txn, env: S.Env, kind: str, actor: Actor, *, state: str = COMMITTED,
           file_id: str | None = None, data: dict | None = None) -> int:
    """Append one record inside ``txn`` and return its sequence number.

    Durable and visible to followers when ``txn`` commits; nothing if it aborts.
    """
    seq, prev = head(txn, env)
    seq += 1
    record = {"seq": seq, "ts": now_us(), "kind": kind, "state": state,
              "actor": actor.as_dict(), "file_id": file_id, "data": data or {},
              "prev": prev}
    body = pack(record)
    digest = hashlib.sha256(body).digest()
    txn.put(S.seq_key(seq), body + digest, db=env.db(S.DB_WAL), append=True)
    txn.put(S.META_WAL_HEAD, pack({"seq": seq, "hash": digest}), db=env.db(S.DB_META))
    return seq


def decode_record(raw: bytes) -> dict:
    """The body of a stored record (its trailing hash is not checked here)."""
    return unpack(bytes(raw)[:-HASH_BYTES])


def read_from(txn, env: S.Env, after_seq: int, limit: int = 1000) -> list[dict]:
    """Records with ``seq > after_seq`` in order, at most ``limit``."""
    out = []
    cur = txn.cursor(db=env.db(S.DB_WAL))
    if not cur.set_range(S.seq_key(after_seq + 1)):
        return out
    for _, raw in cur:
        out.append(decode_record(raw))
        if len(out) >= limit:
            break
    return out


def verify_chain(txn, env: S.Env) -> int | None:
    """The sequence number of the first record that breaks the hash chain, or None.

    A record is broken if its hash does not match its body, its body does not decode or
    disagrees with its key, or its ``prev`` is not the hash of the record before it.
    """
    prev_hash = GENESIS
    prev_seq = 0
    cur = txn.cursor(db=env.db(S.DB_WAL))
    for key, raw in cur:
        seq = S.key_seq(key)
        raw = bytes(raw)
        body, digest = raw[:-HASH_BYTES], raw[-HASH_BYTES:]
        if hashlib.sha256(body).digest() != digest:
            return seq
        try:
            record = unpack(body)
        except Exception:
            return seq
        if not isinstance(record, dict) or record.get("seq") != seq \
                or seq != prev_seq + 1 or record.get("prev") != prev_hash:
            return seq
        prev_hash, prev_seq = digest, seq
    head_seq, head_hash = head(txn, env)
    if head_seq != prev_seq or (prev_seq and head_hash != prev_hash):
        return prev_seq or 1
    return None
