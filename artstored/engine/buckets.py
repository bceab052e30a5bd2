"""Buckets and the object-key index: S3's names for stored files, kept by the engine.

A bucket is a durable record in the ``buckets`` database (name → {created_at, created_by});
creating and deleting one are WAL records (``bucket.create``, ``bucket.delete``). A file
stored under an object key carries ``bucket`` and ``object_key`` in its attr.json (the source
of truth: a catalog rebuild rebuilds the index from the sidecars) and one entry in the
``objkeys`` index::

    bucket (UTF-8) 0x00 key (UTF-8) 0x00 file id (16 bytes, UUIDv7: time order)

so the versions of a key sort oldest first and the newest is the key's current object, and
keys sort in UTF-8 byte order, which is S3's listing order. ``catalog.put``, ``delete`` and
``clear`` call ``index``/``unindex``/``clear`` in the same transaction as the catalog, so the
index never disagrees with it. A key never names a NUL, so ``key 0x01`` sorts after every
version of ``key`` and before every longer key that starts with it.

Nothing here overwrites: a new file under an existing key is a new version beside the old.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from . import attrs as A
from . import ids
from . import lmdb_schema as S
from . import wal as W
from .errors import Conflict, FileNotFound, NotFound, ValidationError

MAX_KEY_BYTES = 1024
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_IPV4_RE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
_SEP = b"\x00"
_AFTER = b"\x01"     # sorts after "key\x00<id>" and before "key<any character>"
_PAST = b"\xff"      # never in UTF-8: sorts after every key that starts with what precedes it


def validate_bucket_name(name) -> str:
    """``name`` if it is a valid bucket name (S3's rules: 3-63 characters of a-z, 0-9, '.'
    and '-', starting and ending with a letter or digit, no '..', not an IPv4 address);
    ValidationError ``invalid_bucket_name`` otherwise."""
    if not isinstance(name, str) or not _BUCKET_RE.match(name) or ".." in name or \
            _IPV4_RE.match(name) or ".-" in name or "-." in name:
        raise ValidationError(
            f"invalid bucket name {str(name)[:70]!r}: 3-63 characters of a-z, 0-9, '.' and "
            "'-', starting and ending with a letter or digit", code="invalid_bucket_name")
    return name


def validate_object_key(key) -> str:
    """``key`` if it is a valid object key: 1-1024 bytes of UTF-8 without control
    characters (they cannot travel in S3's XML listings nor in attr.json readably);
    ValidationError ``invalid_object_key`` otherwise."""
    if not isinstance(key, str) or not key:
        raise ValidationError("an object key is 1-1024 bytes of UTF-8",
                              code="invalid_object_key")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError("an object key must be valid UTF-8",
                              code="invalid_object_key") from None
    if size > MAX_KEY_BYTES:
        raise ValidationError(f"object key of {size} bytes; at most {MAX_KEY_BYTES}",
                              code="invalid_object_key")
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in key):
        raise ValidationError("an object key may not contain control characters",
                              code="invalid_object_key")
    return key


def _prefix(bucket: str) -> bytes:
    return bucket.encode("utf-8") + _SEP


def _entry_key(bucket: str, key: str, file_id: str) -> bytes:
    return _prefix(bucket) + key.encode("utf-8") + _SEP + ids.file_id_key(file_id)


def _version_key(file_id: str) -> bytes:
    try:
        return ids.file_id_key(file_id)
    except FileNotFound:
        return b"\xff" * 16      # not an id: every version is older


def _split(raw: bytes, skip: int) -> tuple[str, str]:
    """(object key, file id) of an index entry, ``skip`` bytes of bucket prefix off."""
    raw = bytes(raw)
    return raw[skip:-17].decode("utf-8"), ids.key_file_id(raw[-16:])


# --- kept in step by the catalog ------------------------------------------------------------


def filename_of(key: str) -> str:
    """The original_filename a file stored under ``key`` gets: its last path segment."""
    return key.rstrip("/").rsplit("/", 1)[-1] or key


def keyed(attr: dict) -> bool:
    return bool(attr.get("bucket")) and bool(attr.get("object_key"))


def index(txn, env: S.Env, attr: dict) -> None:
    """Index a keyed file (inside the catalog's transaction). Its bucket's record is made
    if it is missing: a delete of the bucket that raced this file's upload, or a replica
    from a node where the bucket was made, never leaves a key without its bucket."""
    if keyed(attr):
        ensure(txn, env, attr)
        txn.put(_entry_key(attr["bucket"], attr["object_key"], attr["file_id"]), b"",
                db=env.db(S.DB_OBJECT_KEYS))


def unindex(txn, env: S.Env, attr: dict) -> None:
    if keyed(attr):
        txn.delete(_entry_key(attr["bucket"], attr["object_key"], attr["file_id"]),
                   db=env.db(S.DB_OBJECT_KEYS))


def ensure(txn, env: S.Env, attr: dict) -> None:
    """Inside ``txn``: the record of the bucket ``attr`` names, made if it is missing (a
    rebuild from the sidecars into an empty store brings buckets back with their files)."""
    if keyed(attr) and txn.get(attr["bucket"].encode(), db=env.db(S.DB_BUCKETS)) is None:
        txn.put(attr["bucket"].encode(), W.pack(
            {"name": attr["bucket"], "created_at": A.parse_time(attr["created_at"])
             .timestamp(), "created_by": attr.get("created_by_id") or "rebuild"}),
            db=env.db(S.DB_BUCKETS))


def clear(txn, env: S.Env) -> None:
    txn.drop(env.db(S.DB_OBJECT_KEYS), delete=False)


# --- bucket records (writes) ----------------------------------------------------------------


def create(env: S.Env, name: str, actor: W.Actor) -> dict:
    """Create bucket ``name``; durable when it returns. Conflict ``bucket_exists`` if it
    exists (idempotent only in the caller's eyes: S3 answers that with its own code)."""
    validate_bucket_name(name)
    record = {"name": name, "created_at": time.time(), "created_by": actor.id}
    with env.write() as txn:
        if not txn.put(name.encode(), W.pack(record), db=env.db(S.DB_BUCKETS),
                       overwrite=False):
            raise Conflict(f"bucket {name!r} exists", code="bucket_exists",
                           owner=W.unpack(txn.get(name.encode(),
                                                  db=env.db(S.DB_BUCKETS)))["created_by"])
        W.append(txn, env, W.BUCKET_CREATE, actor, data={"bucket": name})
    return record


def delete(env: S.Env, name: str, actor: W.Actor) -> None:
    """Delete an empty bucket; durable when it returns. NotFound ``bucket_not_found``;
    Conflict ``bucket_not_empty`` while any version of any object is in it."""
    with env.write() as txn:
        if txn.get(name.encode(), db=env.db(S.DB_BUCKETS)) is None:
            raise NotFound(f"no bucket {name!r}", code="bucket_not_found")
        cursor = txn.cursor(db=env.db(S.DB_OBJECT_KEYS))
        if cursor.set_range(_prefix(name)) and bytes(cursor.key()).startswith(_prefix(name)):
            raise Conflict(f"bucket {name!r} is not empty", code="bucket_not_empty")
        txn.delete(name.encode(), db=env.db(S.DB_BUCKETS))
        W.append(txn, env, W.BUCKET_DELETE, actor, data={"bucket": name})


# --- reading (through a ReadView snapshot) ----------------------------------------------------


@dataclass
class Listing:
    """One page of keys: ``keys`` are (key, newest file id) or, for versions, (key, file id,
    is newest); ``prefixes`` the common prefixes rolled up at the delimiter."""
    keys: list
    prefixes: list[str]
    truncated: bool
    next_marker: str | None      # the last key or prefix of this page (V1 NextMarker / V2 token)
    next_version: str | None = None


class Reader:
    """The bucket records and key index as of one read transaction (``Snapshot.buckets``)."""

    def __init__(self, txn, env: S.Env):
        self._txn = txn
        self._env = env

    def _db(self, name: bytes):
        return self._env.dbs.get(name)

    def bucket(self, name: str) -> dict | None:
        db = self._db(S.DB_BUCKETS)
        raw = None if db is None else self._txn.get(name.encode("utf-8"), db=db)
        return None if raw is None else W.unpack(raw)

    def require_bucket(self, name: str) -> dict:
        record = self.bucket(name)
        if record is None:
            raise NotFound(f"no bucket {name!r}", code="bucket_not_found")
        return record

    def buckets(self) -> list[dict]:
        db = self._db(S.DB_BUCKETS)
        return [] if db is None else [W.unpack(v) for _, v in self._txn.cursor(db=db)]

    def versions(self, bucket: str, key: str) -> list[str]:
        """File ids stored under ``key``, oldest first (empty: no such key)."""
        if self._db(S.DB_OBJECT_KEYS) is None:
            return []
        return self._versions_at(_prefix(bucket) + key.encode("utf-8") + _SEP)

    def list(self, bucket: str, *, prefix: str = "", delimiter: str = "",
             after: str = "", limit: int = 1000, versions: bool = False,
             after_version: str | None = None) -> Listing:
        """A page of keys in ``bucket`` that start with ``prefix``, after ``after`` (a key
        or a common prefix given back as ``next_marker``), at most ``limit`` keys and
        prefixes together. With ``versions``, every version of each key, newest first,
        and ``after_version`` resumes inside the key ``after``."""
        db = self._db(S.DB_OBJECT_KEYS)
        out = Listing(keys=[], prefixes=[], truncated=False, next_marker=None)
        if db is None or limit <= 0:
            return out
        base = _prefix(bucket)
        skip = len(base)
        cursor = self._txn.cursor(db=db)
        start = base + prefix.encode("utf-8")
        resume_inside = versions and after and after_version
        if after and (after.encode("utf-8") >= prefix.encode("utf-8")):
            seek = base + after.encode("utf-8") + (_SEP if resume_inside else _AFTER)
            if delimiter and after.endswith(delimiter) and after.startswith(prefix) \
                    and delimiter in after[len(prefix):]:
                seek = base + after.encode("utf-8") + _PAST   # past a rolled-up prefix
            start = max(start, seek)
        if not cursor.set_range(start):
            return out
        count = 0
        while True:
            raw = bytes(cursor.key())
            if not raw.startswith(base + prefix.encode("utf-8")):
                break
            key, _ = _split(raw, skip)
            rest = key[len(prefix):]
            cut = rest.find(delimiter) if delimiter else -1
            if count >= limit:
                out.truncated = True
                break
            if cut >= 0:
                rolled = prefix + rest[:cut + len(delimiter)]
                out.prefixes.append(rolled)
                out.next_marker = rolled
                count += 1
                if not cursor.set_range(base + rolled.encode("utf-8") + _PAST):
                    break
                continue
            all_versions = self._versions_at(raw[:-16])
            if versions:
                newest_first = list(reversed(all_versions))
                if resume_inside and key == after:
                    # Older than the marker (ids sort by time), even if the marker's
                    # version was deleted since the last page.
                    marker = _version_key(after_version)
                    newest_first = [v for v in newest_first if _version_key(v) < marker]
                    resume_inside = None
                for i, file_id in enumerate(newest_first):
                    if count >= limit:
                        out.truncated = True
                        return out
                    out.keys.append((key, file_id, file_id == all_versions[-1]))
                    out.next_marker, out.next_version = key, file_id
                    count += 1
            else:
                out.keys.append((key, all_versions[-1]))
                out.next_marker = key
                count += 1
            if not cursor.set_range(raw[:-17] + _AFTER):
                break
        return out

    def _versions_at(self, stem: bytes) -> list[str]:
        """The file ids of the key whose entries start with ``stem`` (bucket, NUL, key,
        NUL), oldest first; read with a cursor of its own (a listing's stays where it is)."""
        other = self._txn.cursor(db=self._db(S.DB_OBJECT_KEYS))
        out = []
        if other.set_range(stem):
            for raw in other.iternext(keys=True, values=False):
                raw = bytes(raw)
                if not raw.startswith(stem) or len(raw) != len(stem) + 16:
                    break
                out.append(ids.key_file_id(raw[-16:]))
        return out
