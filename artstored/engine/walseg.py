"""Sealed WAL segments: the old part of the log, moved out of LMDB into append-only files.

LMDB holds the catalog and the WAL's tail; without sealing the log would grow LMDB without
bound (a record per upload, PATCH, DELETE, sign-in failure, ...). ``seal`` moves the oldest
records, ``segment_records`` at a time, into a file beside the data, once the tail holds
twice that many: LMDB then never holds more than ``2 × segment_records`` WAL records.

A segment is ``<data_dir>/wal/<first seq:020d>-<last seq:020d>.wal``, written once
(tmp → fsync → rename → fsync dir) and never changed::

    ARTSTORE-WAL-SEGMENT 1\\n
    then per record, in sequence order from <first> to <last> without a gap:
    4-byte big-endian length N, then N bytes: the record exactly as LMDB stored it
    (msgpack body || SHA-256 of the body; see ``wal``)

so the records keep their hash chain across the move, and a segment can be read and
checked without ArtStore. ``meta.wal_sealed`` (in the same LMDB transaction that deletes
the sealed records from the tail) lists the segments with each file's SHA-256, the last
sealed sequence and its record hash. A segment file not listed there is a leftover of a
seal cut short by a crash: it duplicates records still in LMDB and is removed by the next
seal. Listed segments are never removed or rewritten.

Readers that hold a read transaction see a consistent split: records up to ``through`` in
the segments its snapshot lists (written before that snapshot's commit), the rest in LMDB.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading

from . import durable
from . import lmdb_schema as S
from .errors import StoreCorrupt

MAGIC = b"ARTSTORE-WAL-SEGMENT 1\n"
SUFFIX = ".wal"
DEFAULT_SEGMENT_RECORDS = 100_000
_LEN = struct.Struct(">I")
_sealing = threading.Lock()


def directory(env: S.Env) -> str:
    """Where the segments of the store whose LMDB environment is ``env`` live."""
    return os.path.join(os.path.dirname(os.path.abspath(env.path)), "wal")


def segment_name(first: int, last: int) -> str:
    return f"{first:020d}-{last:020d}{SUFFIX}"


def sealed(txn, env: S.Env, unpack) -> dict:
    """{"through": last sealed seq (0: none), "hash": its record hash, "segments":
    [[first, last, name, sha256 hex], ...]} as of ``txn``."""
    raw = txn.get(S.META_WAL_SEALED, db=env.db(S.DB_META))
    if raw is None:
        return {"through": 0, "hash": None, "segments": []}
    return unpack(raw)


def iter_segment(path: str, first: int):
    """(seq, stored record bytes) of every record in the segment file at ``path``, in order;
    StoreCorrupt if the file is missing, not a segment, or cut short."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise StoreCorrupt(f"WAL segment {path} is missing") from None
    with f:
        if f.read(len(MAGIC)) != MAGIC:
            raise StoreCorrupt(f"{path} is not a WAL segment")
        seq = first
        while True:
            head = f.read(_LEN.size)
            if not head:
                return
            if len(head) < _LEN.size:
                raise StoreCorrupt(f"{path}: cut short at record {seq}")
            (n,) = _LEN.unpack(head)
            raw = f.read(n)
            if len(raw) < n:
                raise StoreCorrupt(f"{path}: cut short at record {seq}")
            yield seq, raw
            seq += 1


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def seal(env: S.Env, *, pack, unpack, hash_of, segment_records: int) -> int:
    """Move the oldest ``segment_records`` records out of LMDB into a segment, for as long
    as the tail holds at least twice that many. Returns how many records were sealed.

    Durable when it returns; safe beside every writer and reader (one sealer at a time;
    a crash at any point leaves every record readable exactly once). ``hash_of(raw)`` is
    the record hash stored at the end of ``raw`` (``wal`` passes its own).
    """
    if segment_records < 1:
        raise ValueError("segment_records must be at least 1")
    total = 0
    with _sealing:
        while True:
            with env.read() as txn:
                head_raw = txn.get(S.META_WAL_HEAD, db=env.db(S.DB_META))
                head_seq = unpack(head_raw)["seq"] if head_raw else 0
                state = sealed(txn, env, unpack)
            through = state["through"]
            if head_seq - through < 2 * segment_records:
                return total
            first, last = through + 1, through + segment_records
            folder = directory(env)
            os.makedirs(folder, exist_ok=True)
            _remove_leftovers(folder, state)
            name = segment_name(first, last)
            digest, last_hash = _write_segment(env, os.path.join(folder, name), first, last,
                                               hash_of)
            with env.write() as txn:
                if sealed(txn, env, unpack)["through"] != through:
                    raise StoreCorrupt("two sealers ran at once")  # _sealing prevents it
                cur = txn.cursor(db=env.db(S.DB_WAL))
                for seq in range(first, last + 1):
                    if not cur.set_key(S.seq_key(seq)) or not cur.delete():
                        raise StoreCorrupt(f"WAL record {seq} vanished while sealing")
                state["segments"].append([first, last, name, digest])
                state.update(through=last, hash=last_hash)
                txn.put(S.META_WAL_SEALED, pack(state), db=env.db(S.DB_META))
            total += segment_records


def _write_segment(env: S.Env, path: str, first: int, last: int, hash_of):
    tmp = durable.temp_name_for(path)
    h = hashlib.sha256(MAGIC)
    last_hash = None
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o444)
    try:
        with env.read() as txn:
            cur = txn.cursor(db=env.db(S.DB_WAL))
            if not cur.set_key(S.seq_key(first)):
                raise StoreCorrupt(f"WAL record {first} is missing: cannot seal")
            buf = [MAGIC]
            expected = first
            for key, raw in cur:
                seq = S.key_seq(key)
                if seq > last:
                    break
                if seq != expected:
                    raise StoreCorrupt(f"WAL record {expected} is missing: cannot seal")
                raw = bytes(raw)
                piece = _LEN.pack(len(raw)) + raw
                h.update(piece)
                buf.append(piece)
                last_hash = hash_of(raw)
                expected += 1
                if len(buf) >= 1024:
                    durable.writev_all(fd, buf)
                    buf = []
            if expected != last + 1:
                raise StoreCorrupt(f"WAL record {expected} is missing: cannot seal")
            durable.writev_all(fd, buf)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    durable.fsync_dir(os.path.dirname(path))
    return h.hexdigest(), last_hash


def _remove_leftovers(folder: str, state: dict) -> None:
    listed = {name for _, _, name, _ in state["segments"]}
    for name in os.listdir(folder):
        if name.startswith(".") and name.endswith(SUFFIX + ".tmp"):
            os.unlink(os.path.join(folder, name))
        elif name.endswith(SUFFIX) and name not in listed:
            first = int(name.split("-", 1)[0])
            if first > state["through"]:   # a seal cut short: its records are in LMDB
                os.unlink(os.path.join(folder, name))
