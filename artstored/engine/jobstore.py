"""Background jobs' records in LMDB: what a job is, how far it got, and how it ended.

A record is a plain dict (msgpack) keyed by its id, ``job_<32 hex>`` whose hex is a UUIDv7,
so the ``jobs`` database lists jobs in the order they were created. The records are the
jobs' memory across restarts: ``artstored.preservation.jobs`` resumes a job from the
``checkpoint`` its record carries. ``put`` is durable when it returns. Thread-safe.
"""

from __future__ import annotations

import uuid

from . import ids
from . import lmdb_schema as S
from .wal import pack, unpack

PREFIX = "job_"
KEEP = 1000   # finished jobs kept; older ones are dropped when a new job is recorded


def new_job_id() -> str:
    return PREFIX + uuid.UUID(ids.new_file_id()).hex


def _key(job_id: str) -> bytes | None:
    if not isinstance(job_id, str) or not job_id.startswith(PREFIX) or len(job_id) != 36:
        return None
    try:
        return bytes.fromhex(job_id[len(PREFIX):])
    except ValueError:
        return None


class JobStore:
    def __init__(self, env: S.Env):
        self.env = env

    def put(self, record: dict) -> None:
        """Insert or replace ``record`` (its ``job_id`` names it); durable on return."""
        with self.env.write() as txn:
            self.put_in(txn, record)

    def put_in(self, txn, record: dict) -> None:
        """As ``put``, inside a caller's write transaction: a job's checkpoint commits
        together with the work it describes."""
        key = _key(record["job_id"])
        if key is None:
            raise ValueError(f"not a job id: {record['job_id']!r}")
        txn.put(key, pack(record), db=self.env.db(S.DB_JOBS))

    def get(self, job_id: str) -> dict | None:
        key = _key(job_id)
        if key is None:
            return None
        with self.env.read() as txn:
            raw = txn.get(key, db=self.env.db(S.DB_JOBS))
        return unpack(raw) if raw is not None else None

    def list(self, *, limit: int = 100, kind: str | None = None,
             states: tuple[str, ...] | None = None) -> list[dict]:
        """Newest first, at most ``limit``, filtered by kind and state."""
        out = []
        with self.env.read() as txn:
            cur = txn.cursor(db=self.env.db(S.DB_JOBS))
            positioned = cur.last()
            while positioned and len(out) < limit:
                record = unpack(cur.value())
                if (kind is None or record["kind"] == kind) and \
                        (states is None or record["state"] in states):
                    out.append(record)
                positioned = cur.prev()
        return out

    def prune(self, keep: int = KEEP, finished: tuple[str, ...] = ()) -> int:
        """Drop the oldest finished records beyond ``keep``; returns how many."""
        with self.env.write() as txn:
            db = self.env.db(S.DB_JOBS)
            total = txn.stat(db)["entries"]
            if total <= keep:
                return 0
            dropped = 0
            cur = txn.cursor(db=db)
            positioned = cur.first()
            while positioned and total - dropped > keep:
                if unpack(cur.value())["state"] in finished:
                    cur.delete()
                    dropped += 1
                    positioned = cur.key() != b""
                else:
                    positioned = cur.next()
            return dropped
