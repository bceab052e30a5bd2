"""Taking in what other nodes stored: replicas of files, their metadata changes, their
deletes; and how far this node has followed each peer's log.

Plain synchronous engine code like the rest of ``engine``: the cluster shell fetches bytes
and records from peers and calls these. Every function is idempotent — applying the same
record twice changes nothing — and each change is one WAL record that names its origin
(``{"node": id, "seq": its WAL sequence there}``).

Concurrent metadata changes of one file on two nodes resolve the same way everywhere: the
attr with the greater ``(version, updated_at, updated_by_id)`` wins (all three travel with
the attr, so every node compares the same values). The loser is kept in the audit trail as
a ``file.update`` record in state ROLLED_BACK carrying its attr.

A delete leaves a tombstone (``tombstones`` database): a replica of a deleted file is
refused (FileDeleted), so a node back from a long outage cannot bring it back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from . import attrs as A
from . import catalog, durable, ids
from . import layout as L
from . import lmdb_schema as S
from . import modes as M
from . import wal as W
from .catalog import CatalogEntry
from .errors import ChecksumMismatch, FileNotFound, ValidationError
from .groupcommit import PreparedUpload
from .node import verify_signature

log = logging.getLogger("artstored.engine.replica")

APPLIED, SUPERSEDED, ABSENT, ALREADY = "applied", "superseded", "absent", "already"


class ReplicaRefused(ValidationError):
    """A replica whose bytes or signature do not match its attr record."""

    code = "replica_refused"
    status = 422
    title = "Replica does not match its record"


def prepare_replica(store, writer, attr: dict, *, origin: dict,
                    verify_signature: Callable[[bytes, dict], bool]) -> PreparedUpload:
    """A PreparedUpload for a replica: ``writer`` (finished) holds the bytes another node
    stored under ``attr``. Checks the size, the SHA-256, the origin node's signature of
    the fixity payload (``verify_signature(payload, attr["signature"])``) and the signature
    of the whole record by the node that made its version (``change_signature``). Raises
    ReplicaRefused / ChecksumMismatch; the caller then aborts the writer. Commit it with
    ``store.commit_upload``: if the file is already here, that resolves to what is here; if
    it was deleted here, to FileDeleted."""
    file_id = attr.get("file_id")
    if not isinstance(file_id, str) or ids.file_id_key(file_id) is None:
        raise ReplicaRefused("the replica's attr has no valid file_id")
    if writer.size != attr.get("file_size"):
        raise ReplicaRefused(f"replica of {file_id}: {writer.size} bytes, the record says "
                             f"{attr.get('file_size')}")
    if writer.sha256_hex != attr.get("checksum_sha256"):
        raise ChecksumMismatch(f"replica of {file_id} does not hash to its record's sha256",
                               declared=attr.get("checksum_sha256"), actual=writer.sha256_hex)
    signature = attr.get("signature")
    if not isinstance(signature, dict) or not verify_signature(A.fixity_payload(attr),
                                                                signature):
        raise ReplicaRefused(f"replica of {file_id}: the origin's signature does not verify")
    # The whole record as its maker signed it: a node relaying it cannot change its
    # retention, owner, name or metadata (the fixity signature covers only the bytes).
    require_change_signed(attr, verify_signature)
    try:
        created = A.parse_time(attr["created_at"])
        # The on-disk name is not signed: it must be the one this node would make from the
        # signed fields (so it can name no path outside objects/).
        expected = L.storage_filename(A.validate_original_filename(attr["original_filename"]),
                                      attr.get("created_by_username") or "", created, file_id)
    except (KeyError, TypeError, ValueError, ValidationError) as exc:
        raise ReplicaRefused(f"replica of {file_id}: unusable record ({exc})") from None
    if attr.get("storage_filename") != expected:
        raise ReplicaRefused(f"replica of {file_id}: storage_filename is not the one its "
                             "record gives")
    entry = CatalogEntry(attr=attr, disk=writer.disk.disk_id,
                         rel=L.object_relpath(created, expected))
    actor = W.Actor(attr.get("created_by_id") or "system",
                    attr.get("created_by_username") or "system")
    return PreparedUpload(writer=writer, entry=entry, attr_bytes=A.encode(attr), actor=actor,
                          origin=origin)


_CHANGES_WITH_A_PATCH = frozenset(A.MUTABLE_FIELDS) | {
    "version", "schema_version", "updated_at", "updated_by_id", "updated_by_username",
    "change_signature"}


def _rank(attr: dict) -> tuple:
    return (attr.get("version") or 0, attr.get("updated_at") or "",
            attr.get("updated_by_id") or "")


def require_change_signed(attr: dict, verify_signature: Callable[[bytes, dict], bool]) -> None:
    """ReplicaRefused unless ``attr`` carries its maker's signature of the whole record
    (``change_signature`` over ``attrs.record_payload``) and it verifies."""
    signature = attr.get("change_signature")
    if not isinstance(signature, dict) or not verify_signature(A.record_payload(attr),
                                                                signature):
        raise ReplicaRefused(f"the record of {attr.get('file_id')} (version "
                             f"{attr.get('version')}) is not signed by the node that made it")


def delete_signed(file_id: str, origin_node: str, signature,
                  verify_signature: Callable[[bytes, dict], bool]) -> bool:
    """Whether ``signature`` is ``origin_node``'s signature of a delete of ``file_id``."""
    return isinstance(signature, dict) and signature.get("key_id") == origin_node and \
        verify_signature(A.delete_payload(file_id), signature)


def apply_update(store, attr: dict, *, origin: dict,
                 verify_signature: Callable[[bytes, dict], bool]) -> str:
    """Apply another node's metadata change (its whole new attr, which must carry the
    signature of the node that made it: ReplicaRefused otherwise). Returns ``applied``,
    ``superseded`` (ours wins; theirs recorded as lost), ``already`` (same attr here) or
    ``absent`` (no such file here: its create, when it comes, brings the newest attr).
    Durable when it returns."""
    require_change_signed(attr, verify_signature)
    file_id = attr["file_id"]
    with store.file_lock(file_id):
        entry = store.view.entry(file_id)
        if entry is None:
            return ABSENT
        mine, theirs = _rank(entry.attr), _rank(attr)
        if theirs == mine:
            return ALREADY
        actor = W.Actor(attr.get("updated_by_id") or "system",
                        attr.get("updated_by_username") or "system")
        if theirs < mine:
            with store.env.write() as txn:
                W.append(txn, store.env, W.FILE_UPDATE, actor, state=W.ROLLED_BACK,
                         file_id=file_id, data={"attr": attr, "origin": origin,
                                                "superseded_by": entry.attr.get("version")})
            return SUPERSEDED
        # Only what a PATCH changes may differ: the signing node could otherwise move a
        # file's owner, retention or name.
        for key in set(attr) | set(entry.attr):
            if key not in _CHANGES_WITH_A_PATCH and attr.get(key) != entry.attr.get(key):
                raise ReplicaRefused(f"an update of {file_id} changes {key}")
        store.committer.wait_placed(file_id)
        with store.mode_lock:
            durable.atomic_write(store.content_path(entry) + L.ATTR_SUFFIX, A.encode(attr))
            with store.env.write() as txn:
                catalog.put(txn, store.env, CatalogEntry(attr=attr, disk=entry.disk,
                                                         rel=entry.rel))
                W.append(txn, store.env, W.FILE_UPDATE, actor, file_id=file_id,
                         data={"attr": attr, "origin": origin})
    store.notify_committed()
    return APPLIED


def apply_delete(store, file_id: str, actor: W.Actor, *, origin: dict) -> str:
    """Apply another node's delete: remove the file if it is here, and leave a tombstone
    either way. ``applied``, or ``absent`` (only the tombstone). Durable when it returns."""
    # Under the mode lock, which the group commit holds while it checks for tombstones and
    # commits: a replica of this file either committed before (then it is deleted below) or
    # sees the tombstone and is refused. Never both.
    with store.mode_lock:
        if store.view.entry(file_id) is None:
            with store.env.write() as txn:
                put_tombstone(txn, store.env, file_id, actor, origin)
            return ABSENT
    try:
        store.delete(file_id, actor, reason="replicated", check_mode=False, origin=origin)
        return APPLIED
    except FileNotFound:             # deleted meanwhile by another path: tombstone is there
        return ALREADY


def put_tombstone(txn, env, file_id: str, actor: W.Actor, origin: dict | None) -> None:
    """Inside ``txn``: remember that ``file_id`` was deleted (by whom, when, where first)."""
    txn.put(ids.file_id_key(file_id), W.pack({"deleted_at": time.time(), "by": actor.id,
                                               "origin": origin}),
            db=env.db(S.DB_TOMBSTONES))


def old_tombstones(store, before: float, limit: int = 10_000) -> list[str]:
    """Ids of files deleted before ``before`` (seconds), at most ``limit``."""
    out = []
    with store.env.read() as txn:
        for key, raw in txn.cursor(db=store.env.db(S.DB_TOMBSTONES)):
            if W.unpack(raw)["deleted_at"] < before:
                out.append(ids.key_file_id(bytes(key)))
                if len(out) >= limit:
                    break
    return out


def purge_tombstones(store, file_ids: list[str]) -> int:
    """Forget these tombstones (the caller made sure no member holds a copy any more).
    Durable when it returns; returns how many went."""
    n = 0
    with store.env.write() as txn:
        for fid in file_ids:
            n += bool(txn.delete(ids.file_id_key(fid), db=store.env.db(S.DB_TOMBSTONES)))
    return n


def is_deleted(store, file_id: str) -> bool:
    """Whether a tombstone says ``file_id`` was deleted here (``Snapshot.deleted``)."""
    with store.view.snapshot() as snap:
        return snap.deleted(file_id)


def may_take_replicas(store) -> bool:
    """Whether this element takes new copies (rw and edit: an ro or ar element's files
    are fixed)."""
    return M.allows(store.mode, M.UPLOAD)


# --- whose signatures this node can check -----------------------------------------------------

def remember_node_keys(store, keys: dict[str, bytes]) -> None:
    """Add peers' public keys (node id → 32 bytes) to those this store checks sidecar
    signatures with; a key once known is kept (its files stay checkable after the node
    leaves). Durable when it returns; no write when nothing is new."""
    known = known_node_keys(store)
    new = {n: bytes(k) for n, k in keys.items() if known.get(n) != bytes(k)}
    if not new:
        return
    with store.env.write() as txn:
        txn.put(S.META_NODE_KEYS, W.pack({**known, **new}), db=store.env.db(S.DB_META))


def known_node_keys(store) -> dict[str, bytes]:
    with store.env.read() as txn:
        raw = txn.get(S.META_NODE_KEYS, db=store.env.db(S.DB_META))
    return {} if raw is None else W.unpack(raw)


def signature_valid(store, attr: dict) -> bool:
    """Whether ``attr``'s signature is its signer's: this node's own, or a peer's whose
    key this store was given (``remember_node_keys``)."""
    signature = attr.get("signature")
    if not isinstance(signature, dict):
        return False
    key_id = signature.get("key_id")
    if key_id == store.node.node_id or key_id is None:
        return store.node.verify(A.fixity_payload(attr), signature)
    key = known_node_keys(store).get(key_id)
    return key is not None and verify_signature(key, A.fixity_payload(attr), signature)


# --- how far each peer's log has been followed ------------------------------------------------

def peer_cursor(store, peer: str) -> int:
    """The last sequence of ``peer``'s WAL this node has applied (0: none)."""
    with store.env.read() as txn:
        raw = txn.get(peer.encode("utf-8"), db=store.env.db(S.DB_PEERS))
    return 0 if raw is None else W.unpack(raw)["seq"]


def set_peer_cursor(store, peer: str, seq: int) -> None:
    """Record that ``peer``'s records up to ``seq`` are applied. Durable when it returns;
    never moves back."""
    key = peer.encode("utf-8")
    with store.env.write() as txn:
        raw = txn.get(key, db=store.env.db(S.DB_PEERS))
        if raw is None or W.unpack(raw)["seq"] < seq:
            txn.put(key, W.pack({"seq": seq, "at": time.time()}),
                    db=store.env.db(S.DB_PEERS))
