"""Ways to lose or resurrect a record that a review of the write path found, one test each.

Engine-level (real LMDB, real files, real tmpfs where a small filesystem is needed): each
drives the group commit's steps by hand to stand exactly in the window that matters.
"""

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from artstored.engine import Actor, Store, StoreConfig, UploadRequest
from artstored.engine import wal as W
from artstored.engine.disks import ID_FILE, Thresholds
from artstored.engine.errors import Busy, DiskOffline, StorageFull
from artstored.engine.groupcommit import PreparedUpload
from artstored.engine.rebuild import rebuild_catalog

ALICE = Actor("cl_alice", "alice", "user")
MiB = 1 << 20


def _prepare(store, data: bytes, name: str) -> PreparedUpload:
    writer = store.begin_upload()
    writer.write(data)
    writer.finish()
    return store.prepare_upload(writer, UploadRequest(name), ALICE)


def _committed_not_placed(store, data: bytes, name: str) -> PreparedUpload:
    """An upload in the window between its commit and its rename into objects/."""
    item = _prepare(store, data, name)
    store.committer.stage([item])
    store.committer.flush([item])
    store.committer.commit_txn([item])
    return item


def _reopen(store: Store, **changes) -> Store:
    config = store.config
    store.close()
    for key, value in changes.items():
        setattr(config, key, value)
    return Store(config)


def _intents(store) -> list:
    with store.env.read() as txn:
        return W.intents(txn, store.env)


# --- intents name files by disk identity; nothing an unresolved intent names is deleted ----


def test_intent_finds_its_file_after_the_root_is_mounted_elsewhere(tmp_path):
    root_a, root_b = str(tmp_path / "mnt-a" / "disk"), str(tmp_path / "mnt-b" / "disk")
    store = Store(StoreConfig(data_dir=str(tmp_path / "data"), disks=[root_a]))
    item = _committed_not_placed(store, b"acknowledged bytes", "a.txt")
    file_id = item.entry.file_id
    store.close()  # a crash right after the commit: the intent stays
    os.makedirs(os.path.dirname(root_b))
    os.rename(root_a, root_b)  # the disk comes back mounted at another path
    store = Store(StoreConfig(data_dir=str(tmp_path / "data"), disks=[root_b]))
    try:
        assert store.recovery_report["rolled_forward"] == 1, store.recovery_report
        entry, f = store.open_content(file_id)
        with f:
            assert f.read() == b"acknowledged bytes"
        assert _intents(store) == []
    finally:
        store.close()


def test_unresolved_intent_keeps_its_tmp_files(tmp_path):
    """An intent recovery cannot resolve (its sidecar is unreadable) keeps the files it
    names: tmp/ is emptied of everything else only."""
    store = Store(StoreConfig(data_dir=str(tmp_path / "data")))
    item = _committed_not_placed(store, b"keep me", "k.txt")
    with open(item.tmp_attr, "wb") as f:
        f.write(b"{not json")
    stray = os.path.join(item.writer.disk.tmp, "stray.part")
    open(stray, "wb").close()
    store = _reopen(store)
    try:
        assert store.recovery_report["damaged"] == 1
        assert os.path.exists(item.tmp_data) and os.path.exists(item.tmp_attr)
        assert not os.path.exists(stray)
        assert len(_intents(store)) == 1
    finally:
        store.close()


# --- recovery checks size and checksum before rolling forward -----------------------------


def test_recovery_does_not_roll_forward_damaged_bytes(tmp_path):
    store = Store(StoreConfig(data_dir=str(tmp_path / "data")))
    item = _committed_not_placed(store, b"x" * 5000, "d.bin")
    final = store.content_path(item.entry)
    with open(item.tmp_data, "r+b") as f:  # a torn write: the tail never reached the disk
        f.truncate(4096)
    store = _reopen(store)
    try:
        assert store.recovery_report["damaged"] == 1
        assert store.recovery_report["rolled_forward"] == 0
        assert not os.path.exists(final), "damaged bytes were moved into objects/"
        assert os.path.getsize(item.tmp_data) == 4096, "the evidence was deleted"
    finally:
        store.close()


def test_recovery_keeps_a_placed_sidecar_over_a_leftover_copy(tmp_path):
    """Both copies of the sidecar exist (a rename the journal kept, a tmp copy it did not
    drop): the one in objects/ wins, it may carry a later PATCH."""
    store = Store(StoreConfig(data_dir=str(tmp_path / "data")))
    item = _committed_not_placed(store, b"payload", "p.txt")
    final = store.content_path(item.entry)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    shutil.copy(item.tmp_data, final)
    with open(item.tmp_attr, "rb") as f:
        newer = json.load(f)
    newer["description"] = "newer"
    with open(final + ".attr.json", "w") as f:
        json.dump(newer, f)
    store = _reopen(store)
    try:
        assert store.recovery_report["rolled_forward"] == 1
        with open(final + ".attr.json", "rb") as f:
            assert b"newer" in f.read()
        assert os.listdir(item.writer.disk.tmp) == []
    finally:
        store.close()


# --- a disk root that lost its identity is offline, never re-created --------------------


def test_root_without_its_identity_is_offline(tmp_path):
    mount = tmp_path / "srv" / "disk1"
    root = str(mount / "artstore")
    data_dir = str(tmp_path / "data")
    store = Store(StoreConfig(data_dir=data_dir, disks=[root]))
    kept = store.ingest([b"on the disk"], UploadRequest("x.txt"), ALICE)
    store.close()
    os.rename(mount, tmp_path / "srv" / "disk1.unmounted")
    os.makedirs(mount)  # the bare mount point, as it is when the disk is not mounted
    store = Store(StoreConfig(data_dir=data_dir, disks=[root]))
    try:
        assert os.listdir(mount) == [], "the root was re-created on the parent filesystem"
        with pytest.raises(DiskOffline) as info:
            store.ingest([b"new"], UploadRequest("n.txt"), ALICE)
        assert root in str(info.value) and ID_FILE in str(info.value)
        with pytest.raises(DiskOffline):
            store.open_content(kept["file_id"])
        assert store.get(kept["file_id"]).attr["file_size"] == 11  # metadata stays
        report = store.capacity()
        assert report["disks"][0]["status"] == "offline" and "mounted" in \
            report["disks"][0]["reason"]
        assert os.listdir(mount) == []
        # An online rebuild must not drop the records of an offline disk.
        rebuild_catalog(store)
        assert store.get(kept["file_id"])
    finally:
        store.close()
    os.rmdir(mount)
    os.rename(tmp_path / "srv" / "disk1.unmounted", mount)  # mounted again
    store = Store(StoreConfig(data_dir=data_dir, disks=[root]))
    try:
        _, f = store.open_content(kept["file_id"])
        with f:
            assert f.read() == b"on the disk"
    finally:
        store.close()


def test_root_holding_files_without_identity_is_offline(tmp_path):
    root = tmp_path / "other"
    (root / "objects" / "2020").mkdir(parents=True)
    (root / "objects" / "2020" / "someone-elses.bin").write_bytes(b"x")
    store = Store(StoreConfig(data_dir=str(tmp_path / "data"),
                              disks=[str(root), str(tmp_path / "good")]))
    try:
        offline = [d for d in store.capacity()["disks"] if d["status"] == "offline"]
        assert [d["path"] for d in offline] == [str(root)]
        assert not (root / ID_FILE).exists()
        attr = store.ingest([b"lands on the good one"], UploadRequest("g.txt"), ALICE)
        assert store.content_path(store.get(attr["file_id"])).startswith(str(tmp_path / "good"))
    finally:
        store.close()


# --- PATCH, DELETE and rebuild racing the rename into objects/ --------------------------


def test_patch_racing_the_rename_is_not_undone(store):
    item = _committed_not_placed(store, b"racing", "r.txt")
    file_id = item.entry.file_id
    result = {}

    def patch():
        try:
            result["attr"] = store.patch(file_id, {"description": "v2"}, ALICE)
        except BaseException as exc:  # reported to the test below
            result["error"] = exc

    t = threading.Thread(target=patch)
    t.start()
    t.join(0.3)
    assert t.is_alive(), "PATCH went ahead while the file was still in tmp/"
    store.committer.place([item])
    t.join(10)
    assert "error" not in result, result.get("error")
    assert result["attr"]["version"] == 2
    with open(store.content_path(store.get(file_id)) + ".attr.json", "rb") as f:
        assert b'"v2"' in f.read()
    assert store.get(file_id).attr["version"] == 2


def test_patch_gives_up_with_busy_when_the_rename_never_finishes(store, monkeypatch):
    item = _committed_not_placed(store, b"stuck", "s.txt")
    monkeypatch.setattr(store.committer, "wait_placed",
                        lambda fid, timeout=0.2, w=store.committer.wait_placed: w(fid, timeout))
    with pytest.raises(Busy):
        store.patch(item.entry.file_id, {"description": "v2"}, ALICE)
    store.committer.place([item])


def test_delete_racing_the_rename_stays_deleted(tmp_path):
    store = Store(StoreConfig(data_dir=str(tmp_path / "data"), initial_mode="edit"))
    item = _committed_not_placed(store, b"temporary", "t.txt")
    file_id = item.entry.file_id
    final = store.content_path(item.entry)
    t = threading.Thread(target=store.delete, args=(file_id, ALICE))
    t.start()
    t.join(0.3)
    store.committer.place([item])
    t.join(10)
    assert not t.is_alive()
    assert not os.path.exists(final) and not os.path.exists(final + ".attr.json"), \
        "the rename brought a deleted file back"
    assert _intents(store) == [], "the place intent outlived the delete"
    store = _reopen(store)
    try:
        assert store.recovery_report["unresolved"] == 0
        assert rebuild_catalog(store)["files"] == 0
        with pytest.raises(Exception):
            store.get(file_id)
    finally:
        store.close()


def test_rebuild_keeps_a_file_still_on_its_way_into_objects(store):
    before = store.ingest([b"old"], UploadRequest("o.txt"), ALICE)
    item = _committed_not_placed(store, b"acknowledged", "a.txt")
    report = rebuild_catalog(store)
    assert report["removed"] == 0
    assert store.get(item.entry.file_id).attr["checksum_sha256"] == \
        item.entry.attr["checksum_sha256"]
    assert store.get(before["file_id"])
    store.committer.place([item])


def test_rebuild_lets_writers_commit_between_its_batches(store):
    for i in range(40):
        store.ingest([b"f%d" % i], UploadRequest(f"f{i}.txt"), ALICE)
    during = {}

    def upload_while_rebuilding(files_done):
        if during:
            return
        t = threading.Thread(target=lambda: during.update(
            attr=store.ingest([b"during"], UploadRequest("during.txt"), ALICE)))
        t.start()
        t.join(10)
        during.setdefault("attr", None)

    report = rebuild_catalog(store, batch=8, progress=upload_while_rebuilding)
    assert during["attr"] is not None, "an upload waited for the whole rebuild"
    assert report["files"] >= 40
    assert store.get(during["attr"]["file_id"])  # not swept although the walk missed it


def test_rebuild_does_not_bring_back_a_patched_version(store):
    attr = store.ingest([b"p"], UploadRequest("p.txt"), ALICE)
    patched = {}

    def patch_once(files_done):
        if not patched:
            patched.update(store.patch(attr["file_id"], {"description": "later"}, ALICE))

    # The patch lands after the sidecars were read and before their batch commits? It
    # lands between batches here; either way the catalog must end at version 2.
    rebuild_catalog(store, batch=1, progress=patch_once)
    assert store.get(attr["file_id"]).attr["version"] == 2


# --- the LMDB map grows on demand -------------------------------------------------------


def test_lmdb_map_grows_when_full(tmp_path):
    store = Store(StoreConfig(data_dir=str(tmp_path / "data"), map_size=1 * MiB))
    try:
        for i in range(800):
            store.ingest([b"%d" % i], UploadRequest(f"{i}.txt", description="d" * 500), ALICE)
        assert store.stats()["files"] == 800
        assert store.env.used_bytes() > 1 * MiB  # more than the configured map holds
    finally:
        store.close()


# --- stale LMDB readers ------------------------------------------------------------------


READER = """
import sys
from artstored.engine.lmdb_schema import Env
env = Env(sys.argv[1], readonly=True)
txn = env.env.begin()
print("reading", flush=True)
sys.stdin.read()
"""


def _reader(store) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", READER, store.env.path],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"reading\n"
    return proc


def _dead_reader(store) -> int:
    proc = _reader(store)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.pid


def test_stale_reader_slots_are_cleared(store):
    pid = _dead_reader(store)
    assert f"{pid} " in store.env.env.readers()
    assert store.maintain()["stale_readers_cleared"] >= 1
    assert f"{pid} " not in store.env.env.readers()


def test_stale_reader_slots_are_cleared_at_start(store):
    """A live mount keeps the environment open across the daemon's restart, so LMDB does not
    reset its reader table: the daemon must clear a killed reader's slot itself."""
    live = _reader(store)
    try:
        pid = _dead_reader(store)
        store = _reopen(store)
        try:
            assert store.stale_readers_cleared >= 1
            assert f"{pid} " not in store.env.env.readers()
            assert f"{live.pid} " in store.env.env.readers()
        finally:
            store.close()
    finally:
        live.kill()
        live.wait()


# --- space is reserved across uploads; a full disk is a 507, not a 500 ------------------


@contextlib.contextmanager
def small_filesystem(path, size_mib: int):
    """A real tmpfs of ``size_mib`` (needs root, as the power-cut tests do)."""
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
                   check=True)
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _store_on(tmp_path, root: str, reserve_bytes: int) -> Store:
    reserve = Thresholds(warning=(0, 0), critical=(0, 0), full=(100, reserve_bytes))
    return Store(StoreConfig(data_dir=str(tmp_path / "data"), disks=[root],
                             thresholds={"rw": reserve, "edit": reserve}))


def test_concurrent_uploads_cannot_cross_the_reserve_together(tmp_path):
    with small_filesystem(tmp_path / "fs", 96) as fs:
        store = _store_on(tmp_path, fs + "/disk", reserve_bytes=40 * MiB)
        try:
            usable = store.disks.usable(next(iter(store.disks)))
            assert 50 * MiB < usable < 60 * MiB
            a, b = store.begin_upload(), store.begin_upload()
            chunk = b"\0" * MiB
            a.write_many([chunk] * 35)
            with pytest.raises(StorageFull):
                b.write_many([chunk] * 35)  # each alone fits; together they do not
            a.abort()
            b.abort()
            assert store.disks.claimed(next(iter(store.disks))) == 0
        finally:
            store.close()


def test_sidecar_on_a_full_disk_is_storage_full(tmp_path):
    with small_filesystem(tmp_path / "fs", 8) as fs:
        store = _store_on(tmp_path, fs + "/disk", reserve_bytes=0)
        try:
            filler = os.path.join(fs, "filler")
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            try:
                while True:
                    os.write(fd, b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
            finally:
                os.close(fd)
            os.truncate(filler, os.path.getsize(filler) - 4096)  # room for one page
            with pytest.raises(StorageFull):
                store.ingest([b"d" * 4096], UploadRequest("full.bin"), ALICE)
            assert store.list()[0] == []
            disk = next(iter(store.disks))
            assert os.listdir(disk.tmp) == []
        finally:
            store.close()
