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

Only the tail of the log is in LMDB: ``seal`` moves old records, unchanged, into
append-only segment files beside the data (``walseg``). Every reader here — ``read_from``,
``records``, ``count``, ``verify_chain`` — reads the segments and the tail as one log.

Body (msgpack map): ``seq``, ``ts`` (µs since epoch), ``kind`` (see KINDS), ``state``,
``actor`` ({id, name}), ``file_id`` (or None), ``data`` (kind-specific), ``prev``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import msgpack

from . import lmdb_schema as S
from . import walseg
from .errors import StoreCorrupt

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
AUTH_FAILURE = "auth.failure"   # (older stores) one failed sign-in
AUTH_LOCKOUT = "auth.lockout"   # (older stores) one lockout
AUTH_FAILURES = "auth.failures"  # failed sign-ins and lockouts of an interval, in aggregate
KEYS_ROTATE = "keys.rotate"
CATALOG_REBUILD = "catalog.rebuild"
PRESERVATION = "preservation"   # a PREMIS event: fixity check, quarantine, validation, ...
FILE_RELEASE = "file.release"      # this node's copy dropped: the file lives on elsewhere
CLUSTER_ROSTER = "cluster.roster"  # the admin put a node on the roster or took it off
CLUSTER_MODE = "cluster.mode"      # the admin set an element's mode; or the element refused it
BUCKET_CREATE = "bucket.create"    # an S3 bucket was made (engine.buckets)
BUCKET_DELETE = "bucket.delete"    # an empty S3 bucket was removed
KINDS = (FILE_CREATE, FILE_UPDATE, FILE_DELETE, ELEMENT_MODE, ACCOUNT_CREATE,
         ACCOUNT_UPDATE, AUTH_FAILURE, AUTH_LOCKOUT, AUTH_FAILURES, KEYS_ROTATE,
         CATALOG_REBUILD, PRESERVATION, CLUSTER_ROSTER, CLUSTER_MODE, FILE_RELEASE,
         BUCKET_CREATE, BUCKET_DELETE)

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


def _sealed(txn, env: S.Env) -> dict:
    return walseg.sealed(txn, env, unpack)


def _segment_path(env: S.Env, name: str) -> str:
    return f"{walseg.directory(env)}/{name}"


def records(txn, env: S.Env, start: int | None = None, order: str = "asc"):
    """Every record, one by one: ``asc`` from sequence ``start`` (default 1) up, ``desc``
    from the newest at or below ``start`` (default: the newest) down; sealed segments and
    the LMDB tail as one log. StoreCorrupt if a segment the log lists is missing."""
    if order not in ("asc", "desc"):
        raise ValueError("order must be asc or desc")
    state = _sealed(txn, env)
    through = state["through"]
    if order == "asc":
        start = max(1, start or 1)
        for first, last, name, _ in state["segments"]:
            if last < start:
                continue
            for seq, raw in walseg.iter_segment(_segment_path(env, name), first):
                if seq >= start:
                    yield decode_record(raw)
        cur = txn.cursor(db=env.db(S.DB_WAL))
        if cur.set_range(S.seq_key(max(start, through + 1))):
            for _, raw in cur:
                yield decode_record(raw)
        return
    cur = txn.cursor(db=env.db(S.DB_WAL))
    if start is None:
        positioned = cur.last()
    elif not cur.set_range(S.seq_key(max(0, start))):
        positioned = cur.last()
    else:
        positioned = cur.prev() if S.key_seq(cur.key()) > start else True
    while positioned:
        yield decode_record(cur.value())
        positioned = cur.prev()
    top = through if start is None else min(start, through)
    for first, last, name, _ in reversed(state["segments"]):
        if first > top:
            continue
        segment = [raw for seq, raw in walseg.iter_segment(_segment_path(env, name), first)
                   if seq <= top]
        for raw in reversed(segment):
            yield decode_record(raw)


def read_from(txn, env: S.Env, after_seq: int, limit: int = 1000) -> list[dict]:
    """Records with ``seq > after_seq`` in order, at most ``limit`` (from the sealed
    segments where they are older than the LMDB tail)."""
    out = []
    for record in records(txn, env, after_seq + 1, "asc"):
        out.append(record)
        if len(out) >= limit:
            break
    return out


def count(txn, env: S.Env) -> int:
    """How many records the log holds (sealed and tail)."""
    return _sealed(txn, env)["through"] + txn.stat(env.db(S.DB_WAL))["entries"]


def seal(env: S.Env, segment_records: int = walseg.DEFAULT_SEGMENT_RECORDS) -> int:
    """Seal old records into segment files (see ``walseg.seal``); returns how many."""
    return walseg.seal(env, pack=pack, unpack=unpack,
                       hash_of=lambda raw: bytes(raw)[-HASH_BYTES:],
                       segment_records=segment_records)


def _broken(seq: int, raw: bytes, prev_seq: int, prev_hash: bytes) -> bool:
    body, digest = raw[:-HASH_BYTES], raw[-HASH_BYTES:]
    if hashlib.sha256(body).digest() != digest:
        return True
    try:
        record = unpack(body)
    except Exception:
        return True
    return not isinstance(record, dict) or record.get("seq") != seq \
        or seq != prev_seq + 1 or record.get("prev") != prev_hash


def verify_chain(txn, env: S.Env) -> int | None:
    """The sequence number of the first record that breaks the hash chain, or None.

    A record is broken if its hash does not match its body, its body does not decode or
    disagrees with its key, or its ``prev`` is not the hash of the record before it. A
    sealed segment that is missing, cut short or altered (its file hash no longer the one
    recorded when it was sealed) is broken at its first record it cannot vouch for.
    """
    prev_hash = GENESIS
    prev_seq = 0
    state = _sealed(txn, env)
    for first, last, name, digest in state["segments"]:
        path = _segment_path(env, name)
        try:
            for seq, raw in walseg.iter_segment(path, first):
                if seq > last or _broken(seq, raw, prev_seq, prev_hash):
                    return seq
                prev_hash, prev_seq = raw[-HASH_BYTES:], seq
            if prev_seq != last or walseg.file_sha256(path) != digest:
                return min(prev_seq + 1, last) if prev_seq != last else first
        except (StoreCorrupt, OSError):
            return prev_seq + 1
    if prev_seq != state["through"]:
        return prev_seq + 1
    cur = txn.cursor(db=env.db(S.DB_WAL))
    for key, raw in cur:
        seq = S.key_seq(key)
        raw = bytes(raw)
        if _broken(seq, raw, prev_seq, prev_hash):
            return seq
        prev_hash, prev_seq = raw[-HASH_BYTES:], seq
    head_seq, head_hash = head(txn, env)
    if head_seq != prev_seq or (prev_seq and head_hash != prev_hash):
        return prev_seq or 1
    return None
