"""The engine on its own (real LMDB, real files), for what HTTP cannot reach: the clock of
the retention GC, and crash windows at exact points of the group commit."""

import errno
import hashlib
import json
import os
import time

import pytest

from artstored.engine import Actor, Store, StoreConfig, UploadRequest
from artstored.engine import wal as W
from artstored.engine.errors import StorageFull, StoreLocked
from artstored.engine.groupcommit import PreparedUpload
from artstored.engine.ingest import DIRECT_BLOCK, DIRECT_BYTES
from artstored.engine.rebuild import rebuild_catalog
from artstored.engine.retention import collect_expired

ALICE = Actor("cl_alice", "alice", "user")



def reopen(store: Store) -> Store:
    config = store.config
    store.close()
    return Store(config)


def test_retention_gc_removes_only_expired(store):
    keep = store.ingest([b"keep"], UploadRequest("keep.txt"), ALICE)
    store.ingest([b"short"], UploadRequest("short.txt", retention_policy="temporary",
                                           ttl_days=1), ALICE)
    long = store.ingest([b"long"], UploadRequest("long.txt", retention_policy="temporary",
                                                 ttl_days=10), ALICE)
    assert collect_expired(store)["removed"] == 0
    report = collect_expired(store, now=time.time() + 2 * 86400)
    assert report == {"removed": 1, "bytes": 5, "skipped": None}
    ids = {a["file_id"] for a in store.list(limit=10)[0]}
    assert ids == {keep["file_id"], long["file_id"]}
    path = store.content_path(store.get(long["file_id"]))
    assert collect_expired(store, now=time.time() + 11 * 86400)["removed"] == 1
    assert not os.path.exists(path) and not os.path.exists(path + ".attr.json")
    with store.env.read() as txn:
        kinds = [r["kind"] for r in W.read_from(txn, store.env, 0)]
    assert kinds.count("file.delete") == 2


def test_retention_gc_skips_frozen_modes(store):
    store.ingest([b"t"], UploadRequest("t.txt", retention_policy="temporary", ttl_days=1), ALICE)
    store.set_mode("ro", ALICE)
    report = collect_expired(store, now=time.time() + 2 * 86400)
    assert report["removed"] == 0 and "ro" in report["skipped"]


def _prepare(store, data: bytes, name: str) -> PreparedUpload:
    writer = store.begin_upload()
    writer.write(data)
    writer.finish()
    return store.prepare_upload(writer, UploadRequest(name), ALICE)


def test_crash_before_commit_leaves_nothing(store):
    """Staged and flushed, not committed: nobody was told, so nothing may remain."""
    item = _prepare(store, b"early", "e.txt")
    store.committer.stage([item])
    store.committer.flush([item])
    tmp_dir = item.writer.disk.tmp
    assert len(os.listdir(tmp_dir)) == 2
    store = reopen(store)
    assert store.recovery_report["tmp_removed"] == 2
    assert os.listdir(tmp_dir) == []
    assert store.list()[0] == []
    with store.env.read() as txn:
        assert [r for r in W.read_from(txn, store.env, 0) if r["kind"] == "file.create"] == []
    store.close()


def test_crash_after_commit_finishes_the_move(store):
    """Committed, still in tmp/: recovery moves it into objects/."""
    item = _prepare(store, b"complete", "c.txt")
    store.committer.stage([item])
    store.committer.flush([item])
    store.committer.commit_txn([item])
    # Readers in this process find it already, in tmp/.
    entry, f = store.open_content(item.entry.file_id)
    assert f.read() == b"complete"
    f.close()
    store = reopen(store)
    assert store.recovery_report["rolled_forward"] == 1
    path = store.content_path(store.get(item.entry.file_id))
    with open(path, "rb") as f:
        assert f.read() == b"complete"
    assert os.path.exists(path + ".attr.json")
    assert os.listdir(item.writer.disk.tmp) == []
    with store.env.read() as txn:
        assert W.intents(txn, store.env) == []
    store.close()


def test_crash_halfway_through_the_move(store):
    item = _prepare(store, b"half", "h.txt")
    store.committer.stage([item])
    store.committer.flush([item])
    store.committer.commit_txn([item])
    final = store.content_path(item.entry)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    os.rename(item.tmp_data, final)  # the data moved, its sidecar not yet
    store = reopen(store)
    assert store.recovery_report["rolled_forward"] == 1
    assert os.path.exists(final) and os.path.exists(final + ".attr.json")
    store.close()


def test_clean_stop_leaves_no_intents(store):
    store.ingest([b"a"], UploadRequest("a.txt"), ALICE)
    store = reopen(store)
    assert store.recovery_report == {"rolled_forward": 0, "rolled_back": 0, "unresolved": 0, "damaged": 0,
                                     "tmp_removed": 0}
    store.close()


def test_interrupted_patch_resolves_by_sidecar(store):
    attr = store.ingest([b"p"], UploadRequest("p.txt"), ALICE)
    store.patch(attr["file_id"], {"description": "v2"}, ALICE)
    assert store.get(attr["file_id"]).attr["version"] == 2
    store = reopen(store)
    assert store.get(attr["file_id"]).attr["description"] == "v2"
    store.close()


@pytest.mark.parametrize("offset", [10, -3, -40])  # body, its hash, the prev link
def test_wal_is_a_hash_chain(store, offset):
    attr = store.ingest([b"x"], UploadRequest("x.txt"), ALICE)
    store.patch(attr["file_id"], {"description": "d"}, ALICE)
    with store.env.read() as txn:
        assert W.verify_chain(txn, store.env) is None
        records = W.read_from(txn, store.env, 0)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    # Change one byte of one record: the chain names it.
    target = records[1]["seq"]
    from artstored.engine import lmdb_schema as S
    with store.env.write() as txn:
        raw = bytearray(txn.get(S.seq_key(target), db=store.env.db(S.DB_WAL)))
        raw[offset] ^= 0x01
        txn.put(S.seq_key(target), bytes(raw), db=store.env.db(S.DB_WAL))
    with store.env.read() as txn:
        assert W.verify_chain(txn, store.env) == target


def test_signature_checks_offline(store, tmp_path):
    import base64

    import nacl.signing

    from artstored.engine import attrs as A

    attr = store.ingest([b"sig"], UploadRequest("s.txt"), ALICE)
    with open(os.path.join(store.data_dir, "node.json")) as f:
        node = json.load(f)
    public = base64.urlsafe_b64decode(node["public_key"] + "==")
    sig = base64.urlsafe_b64decode(attr["signature"]["value"] + "==")
    nacl.signing.VerifyKey(public).verify(A.fixity_payload(attr), sig)
    assert attr["signature"]["key_id"] == node["node_id"] == attr["origin_node"]


def test_rebuild_reads_v1_sidecars(store):
    attr = store.ingest([b"old"], UploadRequest("old.txt"), ALICE)
    sidecar = store.content_path(store.get(attr["file_id"])) + ".attr.json"
    with open(sidecar) as f:
        doc = json.load(f)
    for key in ("schema_version", "custom_attributes"):
        doc.pop(key)
    with open(sidecar, "w") as f:
        json.dump(doc, f)
    report = rebuild_catalog(store)
    assert report["files"] == 1
    migrated = store.get(attr["file_id"]).attr
    assert migrated["schema_version"] == "2.0" and migrated["custom_attributes"] == {}
    # The next change writes it back as v2.
    store.patch(attr["file_id"], {"description": "now v2"}, ALICE)
    with open(sidecar) as f:
        assert json.load(f)["schema_version"] == "2.0"


def test_rebuild_reports_problems(store):
    a = store.ingest([b"aaaa"], UploadRequest("a.txt"), ALICE)
    b = store.ingest([b"bbbb"], UploadRequest("b.txt"), ALICE)
    path_a = store.content_path(store.get(a["file_id"]))
    path_b = store.content_path(store.get(b["file_id"]))
    os.unlink(path_a)
    with open(path_b, "r+b") as f:
        f.write(b"X")
    orphan = os.path.join(os.path.dirname(path_b), "stray.bin")
    with open(orphan, "wb") as f:
        f.write(b"?")
    report = rebuild_catalog(store, verify=True)
    assert report["missing_data"] == [a["file_id"]]
    assert report["checksum_mismatch"] == [b["file_id"]]
    assert report["orphan_data"] == [orphan]
    assert report["files"] == 0


def test_one_process_per_data_dir(store):
    with pytest.raises(StoreLocked):
        Store(StoreConfig(data_dir=store.data_dir))


def _uneven_writes(writer, data: bytes) -> None:
    offset, step = 0, 1
    while offset < len(data):   # 1 byte, then growing pieces, never block-aligned
        writer.write_many([data[offset:offset + step]])
        offset += step
        step = step * 7 + 3


def _commit_and_read(store, writer) -> tuple[dict, bytes]:
    attr = store.commit_upload(store.finish_upload(
        writer, UploadRequest(original_filename="big.bin"), ALICE)).result()
    _, f = store.open_content(attr["file_id"])
    with f:
        return attr, f.read()


def _takes_o_direct(directory: str) -> bool:
    try:
        probe = os.path.join(directory, ".probe")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
        os.close(fd)
        os.unlink(probe)
        return True
    except OSError:
        return False


@pytest.mark.parametrize("size", [DIRECT_BYTES, DIRECT_BYTES + 1, DIRECT_BYTES + 4095,
                                  DIRECT_BYTES + DIRECT_BLOCK + 12345])
def test_large_uploads_bypass_the_page_cache_byte_exact(store, size):
    """An upload announced as large is written with O_DIRECT in aligned blocks and its tail
    through the page cache (where the filesystem takes O_DIRECT; cached otherwise): the
    stored file is the bytes sent, whatever the chunking."""
    data = os.urandom(size)
    writer = store.begin_upload(size)
    assert (writer._direct_fd is not None) == _takes_o_direct(writer.disk.tmp)
    _uneven_writes(writer, data)
    attr, stored = _commit_and_read(store, writer)
    assert attr["checksum_sha256"] == hashlib.sha256(data).hexdigest()
    assert stored == data


def test_a_device_refusing_o_direct_writes_gets_cached_writes(store, monkeypatch):
    """EINVAL from the first O_DIRECT write (a device with larger logical blocks): the
    upload goes on through the page cache, byte-exact."""
    data = os.urandom(DIRECT_BYTES + 777)
    writer = store.begin_upload(len(data))
    if writer._direct_fd is None:
        pytest.fail("this filesystem does not take O_DIRECT; the refusal cannot be staged")
    real_pwrite, direct_fd = os.pwrite, writer._direct_fd

    def pwrite(fd, data, offset):
        if fd == direct_fd:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)
    monkeypatch.setattr(os, "pwrite", pwrite)
    _uneven_writes(writer, data)
    assert writer._direct_fd is None
    monkeypatch.undo()
    assert _commit_and_read(store, writer)[1] == data


def test_a_disk_full_during_an_o_direct_upload_leaves_nothing(store, monkeypatch):
    """ENOSPC from an O_DIRECT write: StorageFull, and abort leaves no temporary file and
    no open descriptor behind."""
    writer = store.begin_upload(DIRECT_BYTES + 1)
    if writer._direct_fd is None:
        pytest.fail("this filesystem does not take O_DIRECT; the failure cannot be staged")
    real_pwrite, direct_fd, calls = os.pwrite, writer._direct_fd, []

    def pwrite(fd, data, offset):
        if fd == direct_fd:
            calls.append(offset)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)
    monkeypatch.setattr(os, "pwrite", pwrite)
    with pytest.raises(StorageFull):
        writer.write_many([os.urandom(3 * DIRECT_BLOCK)])
    writer.abort()
    assert not os.path.exists(writer.tmp_path)
    assert writer._fd is None and writer._direct_fd is None
    still_open = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(writer.tmp_path):
                still_open.append(fd)
        except OSError:
            pass   # the listing's own descriptor, gone
    assert not still_open, "a descriptor of the aborted upload is still open"

