"""Records of S3 access keys in the ``s3keys`` database (access key id → record), each
change with its WAL record (never with a secret). The record's secret is sealed by the
caller (``auth.s3keys``); the engine stores it as it is given. Each function is one LMDB
transaction, durable when it returns."""

from __future__ import annotations

import time

from . import lmdb_schema as S
from . import wal as W
from .errors import Conflict, NotFound

ACTIVE, REVOKED = "active", "revoked"


def _db(env: S.Env):
    return env.db(S.DB_S3_KEYS)


def add(env: S.Env, record: dict, actor: W.Actor) -> None:
    """Store a new key's record; Conflict if its id is taken."""
    with env.write() as txn:
        if not txn.put(record["access_key_id"].encode(), W.pack(record), db=_db(env),
                       overwrite=False):
            raise Conflict("access key id collision; try again")
        W.append(txn, env, W.ACCOUNT_UPDATE, actor,
                 data={"client_id": record["client_id"], "change": "s3 key created",
                       "access_key_id": record["access_key_id"]})


def get(env: S.Env, access_key_id: str) -> dict | None:
    with env.read() as txn:
        raw = txn.get(access_key_id.encode("utf-8", "replace"), db=_db(env))
    return None if raw is None else W.unpack(raw)


def all_records(env: S.Env) -> list[dict]:
    with env.read() as txn:
        return [W.unpack(v) for _, v in txn.cursor(db=_db(env))]


def revoke(env: S.Env, access_key_id: str, actor: W.Actor, *,
           client_id: str | None = None) -> dict:
    """Mark a key revoked for good (idempotent); NotFound ``s3_key_not_found`` if there is
    no such key (of ``client_id``'s account, when given)."""
    with env.write() as txn:
        raw = txn.get(access_key_id.encode("utf-8", "replace"), db=_db(env))
        record = None if raw is None else W.unpack(raw)
        if record is None or client_id not in (None, record["client_id"]):
            raise NotFound(f"no S3 key {access_key_id[:40]!r}", code="s3_key_not_found")
        if record["status"] != REVOKED:
            record.update(status=REVOKED, revoked_at=time.time(), revoked_by=actor.id)
            txn.put(access_key_id.encode(), W.pack(record), db=_db(env))
            W.append(txn, env, W.ACCOUNT_UPDATE, actor,
                     data={"client_id": record["client_id"], "change": "s3 key revoked",
                           "access_key_id": access_key_id})
    return record
