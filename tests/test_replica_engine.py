"""The engine's side of replication (engine/replica.py), with two real stores: a replica
is verified and committed once, whatever arrives twice; deletes leave tombstones that
nothing resurrects; concurrent metadata changes resolve by one rule everywhere."""

import os

import pytest

from artstored.cluster.repair import missing_here
from artstored.engine import Store, StoreConfig
from artstored.engine import layout as L
from artstored.engine import attrs as A
from artstored.engine import replica as R
from artstored.engine import wal as W
from artstored.engine.errors import ChecksumMismatch, FileDeleted
from artstored.engine.node import verify_signature
from artstored.engine.uploads import UploadRequest

ALICE = W.Actor("cl_alice", "alice", "user")
BOB = W.Actor("cl_bob", "bob", "user")


@pytest.fixture
def pair(tmp_path):
    a = Store(StoreConfig(data_dir=str(tmp_path / "a")))
    b = Store(StoreConfig(data_dir=str(tmp_path / "b")))
    yield a, b
    a.close()
    b.close()


def copy_to(origin: Store, target: Store, attr: dict, content: bytes, **kw):
    """What the cluster shell does: stream the bytes into a writer, prepare, commit."""
    writer = target.begin_upload(len(content))
    writer.write_many([content])
    writer.finish()
    key = bytes(origin.node.key.verify_key)
    try:
        prepared = R.prepare_replica(
            target, writer, attr, origin={"node": origin.node.node_id, "seq": 1},
            verify_signature=lambda p, s: verify_signature(key, p, s), **kw)
    except BaseException:
        writer.abort()
        raise
    return target.commit_upload(prepared).result(), prepared


def upload(store: Store, content: bytes) -> dict:
    return store.ingest([content], UploadRequest(original_filename="a.txt"), ALICE)


def records(store: Store, kind: str) -> list[dict]:
    with store.view.snapshot() as snap:
        return [r for r in snap.wal_records(0) if r["kind"] == kind]


def test_a_replica_is_byte_identical_and_names_its_origin(pair):
    a, b = pair
    attr = upload(a, b"archive me")
    got, prepared = copy_to(a, b, attr, b"archive me")
    assert got == attr and b.get(attr["file_id"]).attr == attr
    entry, f = b.open_content(attr["file_id"])
    with f:
        assert f.read() == b"archive me"
    [create] = records(b, W.FILE_CREATE)
    assert create["data"]["origin"] == {"node": a.node.node_id, "seq": 1}
    assert prepared.seq == create["seq"]


def test_the_same_replica_twice_changes_nothing(pair):
    a, b = pair
    attr = upload(a, b"twice")
    copy_to(a, b, attr, b"twice")
    seq_before = b.stats()["wal_seq"]
    got, _ = copy_to(a, b, attr, b"twice")
    assert got == attr
    assert b.stats()["wal_seq"] == seq_before and len(records(b, W.FILE_CREATE)) == 1
    assert b.stats()["files"] == 1
    assert not [n for n in _tmp_files(b)]


def _tmp_files(store):
    import os
    return [n for d in store.disks.online() for n in os.listdir(d.tmp)]


def test_a_replica_that_does_not_match_is_refused(pair):
    a, b = pair
    attr = upload(a, b"genuine")
    with pytest.raises(ChecksumMismatch):
        copy_to(a, b, attr, b"genuinE")
    with pytest.raises(R.ReplicaRefused):
        copy_to(a, b, attr, b"genuine!")
    forged = dict(attr, description="changed", signature=dict(attr["signature"]))
    forged["file_size"] = attr["file_size"]
    # Signed by b instead of a: the signature is not the origin's.
    forged["signature"] = b.node.sign(b"whatever")
    with pytest.raises(R.ReplicaRefused):
        copy_to(a, b, forged, b"genuine")
    assert b.stats()["files"] == 0 and not _tmp_files(b)


def test_a_deleted_file_is_never_brought_back(pair):
    a, b = pair
    attr = upload(a, b"short-lived")
    copy_to(a, b, attr, b"short-lived")
    b.delete(attr["file_id"], BOB, check_mode=False)  # (rw forbids deletes by clients)
    assert R.is_deleted(b, attr["file_id"])
    with pytest.raises(FileDeleted):
        copy_to(a, b, attr, b"short-lived")
    assert b.stats()["files"] == 0
    # A delete that arrives before the file leaves a tombstone too.
    other = upload(a, b"other")
    assert R.apply_delete(b, other["file_id"], BOB, origin={"node": "n-x", "seq": 9}) == \
        R.ABSENT
    with pytest.raises(FileDeleted):
        copy_to(a, b, other, b"other")
    assert R.apply_delete(a, other["file_id"], BOB, origin={"node": "n-x", "seq": 9}) == \
        R.APPLIED
    assert a.stats()["files"] == 1


def test_concurrent_patches_resolve_the_same_everywhere_and_the_loser_is_kept(pair):
    a, b = pair
    attr = upload(a, b"contested")
    copy_to(a, b, attr, b"contested")
    on_a = a.patch(attr["file_id"], {"description": "from a"}, ALICE)
    on_b = b.patch(attr["file_id"], {"description": "from b"}, BOB)
    assert on_a["version"] == on_b["version"] == 2
    results = (R.apply_update(a, on_b, origin={"node": "b", "seq": 5},
                              verify_signature=keys_of(a, b)),
               R.apply_update(b, on_a, origin={"node": "a", "seq": 5},
                              verify_signature=keys_of(a, b)))
    assert sorted(results) == [R.APPLIED, R.SUPERSEDED]
    final_a, final_b = a.get(attr["file_id"]).attr, b.get(attr["file_id"]).attr
    assert final_a == final_b
    winner = max((on_a, on_b), key=lambda x: (x["version"], x["updated_at"],
                                              x["updated_by_id"]))
    assert final_a["description"] == winner["description"]
    # The losing value stays in the audit trail of the node that was told of it.
    kept = [r for s in (a, b) for r in records(s, W.FILE_UPDATE)
            if r["state"] == W.ROLLED_BACK]
    assert len(kept) == 1 and kept[0]["data"]["attr"]["description"] != winner["description"]
    # Again: nothing changes.
    assert R.apply_update(a, final_b, origin={"node": "b", "seq": 6},
                          verify_signature=keys_of(a, b)) == R.ALREADY


def keys_of(*stores):
    """A verifier that knows these stores' node keys (as a cluster document gives them)."""
    keys = {s.node.node_id: bytes(s.node.key.verify_key) for s in stores}

    def verify(payload, signature):
        key = keys.get(signature.get("key_id"))
        return key is not None and verify_signature(key, payload, signature)
    return verify


def test_a_record_altered_on_its_way_is_refused(pair):
    """Every version of a record is signed whole by the node that made it: a node relaying
    it cannot change a description, an attribute or a delete's target unnoticed."""
    a, b = pair
    attr = upload(a, b"signed whole")
    copy_to(a, b, attr, b"signed whole")
    changed = a.patch(attr["file_id"], {"description": "the real change"}, ALICE)
    forged = dict(changed, description="a forged change")
    with pytest.raises(R.ReplicaRefused):
        R.apply_update(b, forged, origin={"node": "a", "seq": 7}, verify_signature=keys_of(a))
    unsigned = {k: v for k, v in changed.items() if k != "change_signature"}
    with pytest.raises(R.ReplicaRefused):
        R.apply_update(b, unsigned, origin={"node": "a", "seq": 7},
                       verify_signature=keys_of(a))
    # Signed by a node the verifier does not know: refused as well.
    with pytest.raises(R.ReplicaRefused):
        R.apply_update(b, changed, origin={"node": "a", "seq": 7}, verify_signature=keys_of(b))
    assert b.get(attr["file_id"]).attr["description"] == ""
    assert R.apply_update(b, changed, origin={"node": "a", "seq": 7},
                          verify_signature=keys_of(a)) == R.APPLIED
    # A new file whose description was altered after its upload is refused too, and so is
    # one whose record lost its change signature (a relay cannot strip it to alter more).
    other = upload(a, b"fresh")
    with pytest.raises(R.ReplicaRefused):
        copy_to(a, b, dict(other, description="slipped in"), b"fresh")
    with pytest.raises(R.ReplicaRefused):
        copy_to(a, b, {k: v for k, v in other.items() if k != "change_signature"}, b"fresh")
    # A signed update may change only what a PATCH changes.
    moved = dict(changed, retention_policy="temporary", version=changed["version"] + 1)
    moved["change_signature"] = a.node.sign(A.record_payload(moved))
    with pytest.raises(R.ReplicaRefused):
        R.apply_update(b, moved, origin={"node": "a", "seq": 8}, verify_signature=keys_of(a))
    # A delete carries its origin's signature of exactly that file id.
    a.delete(other["file_id"], ALICE, check_mode=False)
    [delete] = [r for r in records(a, W.FILE_DELETE) if r["file_id"] == other["file_id"]]
    sig = delete["data"]["origin_sig"]
    node = a.node.node_id
    assert R.delete_signed(other["file_id"], node, sig, keys_of(a))
    assert not R.delete_signed(attr["file_id"], node, sig, keys_of(a))
    assert not R.delete_signed(other["file_id"], b.node.node_id, sig, keys_of(a, b))
    assert not R.delete_signed(other["file_id"], node, None, keys_of(a))


def test_peer_cursors_only_move_forward(pair):
    a, _ = pair
    assert R.peer_cursor(a, "n-peer") == 0
    R.set_peer_cursor(a, "n-peer", 10)
    R.set_peer_cursor(a, "n-peer", 7)
    assert R.peer_cursor(a, "n-peer") == 10


def _crash_after_intent(store, file_id: str, kind: str) -> None:
    """What a power cut leaves after the first step of a removal: its intent, durable."""
    from artstored.engine import ids
    entry = store.get(file_id)
    with store.env.write() as txn:
        W.put_intent(txn, store.env, ids.file_id_key(ids.new_file_id()), kind, W.SYSTEM,
                     file_id=file_id, disk=entry.disk, rel=entry.rel)


def test_recovery_finishes_a_release_as_a_release_and_a_delete_with_its_tombstone(tmp_path):
    config = StoreConfig(data_dir=str(tmp_path / "s"))
    s = Store(config)
    kept = upload(s, b"released here, kept elsewhere")
    gone = upload(s, b"deleted everywhere")
    _crash_after_intent(s, kept["file_id"], W.FILE_RELEASE)
    _crash_after_intent(s, gone["file_id"], W.FILE_DELETE)
    s.close()
    s = Store(config)                       # recovery resolves both intents
    try:
        assert s.stats()["files"] == 0
        kinds = {r["file_id"]: r["kind"] for r in records(s, W.FILE_RELEASE)
                 + records(s, W.FILE_DELETE)}
        # A release must never reach other nodes as a delete (followers apply file.delete).
        assert kinds == {kept["file_id"]: W.FILE_RELEASE, gone["file_id"]: W.FILE_DELETE}
        assert not R.is_deleted(s, kept["file_id"])   # it may come back as a replica
        assert R.is_deleted(s, gone["file_id"])       # it may not
    finally:
        s.close()


def test_a_replica_cannot_name_its_own_path(pair):
    a, b = pair
    attr = upload(a, b"where do I go")
    for name in ("../../../../tmp/evil", "/etc/passwd", attr["storage_filename"] + "x"):
        with pytest.raises(R.ReplicaRefused):
            copy_to(a, b, dict(attr, storage_filename=name), b"where do I go")
    assert b.stats()["files"] == 0 and not _tmp_files(b)


def test_old_tombstones_are_listed_and_purged(pair):
    a, _ = pair
    for i in range(3):
        R.apply_delete(a, f"01a21e26-0000-7000-8000-00000000000{i}", BOB,
                       origin={"node": "n-x", "seq": i})
    assert R.old_tombstones(a, before=0.0) == []           # none older than the epoch
    old = R.old_tombstones(a, before=2e9)
    assert len(old) == 3 and all(R.is_deleted(a, f) for f in old)
    assert R.purge_tombstones(a, old[:2]) == 2
    assert [R.is_deleted(a, f) for f in old] == [False, False, True]
    assert R.purge_tombstones(a, old[:2]) == 0             # idempotent


def _replica(origin: Store, target: Store, attr: dict, content: bytes):
    """A bundle receiver's copy: bytes in memory, prepared, not yet submitted."""
    writer = target.buffer([content])
    key = bytes(origin.node.key.verify_key)
    return R.prepare_replica(target, writer, attr, origin={"node": origin.node.node_id,
                                                           "seq": 1},
                             verify_signature=lambda p, s: verify_signature(key, p, s))


def test_copies_staged_by_their_receiver_commit_byte_exact_and_leave_no_tmp(pair):
    """A bundle's receiver writes each copy in tmp/ from its own thread
    (``PreparedUpload.stage``) before handing it to the group commit, which then stages
    nothing; a copy that arrives twice, staged, goes with nothing left in tmp/; a staged
    copy that is discarded leaves nothing either."""
    a, b = pair
    contents = [os.urandom(1000 + i) for i in range(24)]
    attrs = [upload(a, c) for c in contents]
    tmp = b.disks.online()[0].tmp
    for _ in range(2):                  # the second time they are all here already
        prepared = [_replica(a, b, attr, c) for attr, c in zip(attrs, contents)]
        for item in prepared:
            item.stage()
            item.stage()                # a second call does nothing
        assert len(os.listdir(tmp)) == 2 * len(prepared)
        futures = [b.commit_upload(item) for item in prepared]
        assert [f.result(timeout=30) for f in futures] == attrs
        assert os.listdir(tmp) == []
    for attr, content in zip(attrs, contents):
        entry, f = b.open_content(attr["file_id"])
        with f:
            assert f.read() == content
    assert b.stats()["files"] == len(attrs)
    extra = upload(a, b"discarded")
    item = _replica(a, b, extra, b"discarded")
    item.stage()
    item.discard()
    assert os.listdir(tmp) == []
    assert b.view.entry(extra["file_id"]) is None


def test_a_batch_of_staged_and_unstaged_uploads_lands_byte_exact(pair):
    """The committer's own steps on a batch where some uploads were staged by their
    submitter and some were not (small uploads from the event loop): each written once,
    every file in objects/ with its sidecar, tmp/ empty."""
    _, b = pair
    contents = [os.urandom(500 + i) for i in range(12)]
    items = [b.prepare_buffered([c], UploadRequest(original_filename=f"f{i}.bin"), ALICE)
             for i, c in enumerate(contents)]
    for item in items[::2]:
        item.stage()
    live = b.committer.stage(items)
    assert live == items and all(item.staged for item in items)
    b.committer.flush(live)
    b.committer.commit_txn(live)
    b.committer.place(live)
    assert os.listdir(b.disks.online()[0].tmp) == []
    for item, content in zip(items, contents):
        entry, f = b.open_content(item.entry.file_id)
        with f:
            assert f.read() == content
        assert os.path.exists(b.content_path(entry) + L.ATTR_SUFFIX)


def test_what_a_peer_is_told_is_missing_here(pair):
    """``missing_here`` (a peer's ``have`` question): a file held is not missing, in any
    spelling of its id; one never seen is, as asked; a deleted one is not (its tombstone
    answers for it); what is no file id is left out."""
    a, b = pair
    held = upload(b, b"held")["file_id"]
    gone = upload(b, b"gone")["file_id"]
    b.delete(gone, BOB, check_mode=False)
    unseen = upload(a, b"only on a")["file_id"]
    asked = [held, held.upper(), gone, unseen, unseen.upper(), "not-an-id", 5, None]
    assert missing_here(b, asked) == [unseen, unseen.upper()]
