"""The engine's read view (real LMDB, real files): entries and ranges, pages, mode, the WAL,
where a file's bytes are while its commit moves them, and a view in another process."""

import os
import re
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone

import pytest

from artstored.engine import Actor, ReadView, Store, StoreConfig, UploadRequest
from artstored.engine import ids
from artstored.engine import layout as L
from artstored.engine import lmdb_schema as S
from artstored.engine import wal as W
from artstored.engine.errors import BadRequest, DiskOffline, StoreCorrupt

ALICE = Actor("cl_alice", "alice", "user")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def put(store, name, data=b"x"):
    return store.ingest([data], UploadRequest(name), ALICE)


def now() -> datetime:
    return datetime.now(timezone.utc)


def next_ms() -> datetime:
    """A moment in a later millisecond than any id made so far (ids carry ms)."""
    time.sleep(0.003)
    moment = now()
    time.sleep(0.003)
    return moment


def test_entries_ranges_and_pages(store):
    view = ReadView.of_store(store)
    assert view.entries() == [] and view.first_entry() is None and view.last_entry() is None
    t0 = next_ms()
    a = put(store, "a.txt", b"aaa")
    t1 = next_ms()
    b = put(store, "b.txt", b"bb")
    t2 = next_ms()
    c = put(store, "c.txt", b"c")
    t3 = next_ms()

    assert view.entry(a["file_id"]).attr == a
    assert view.entry(ids.new_file_id()) is None
    assert view.entry("not-a-uuid") is None
    assert [e.file_id for e in view.entries()] == [a["file_id"], b["file_id"], c["file_id"]]
    assert [e.file_id for e in view.entries(t1, t2)] == [b["file_id"]]
    assert [e.file_id for e in view.entries(t1)] == [b["file_id"], c["file_id"]]
    assert [e.file_id for e in view.entries(None, t1)] == [a["file_id"]]
    assert view.entries(t3) == [] and view.entries(t0 - timedelta(days=1), t0) == []
    assert view.any_between(t2, t3) and not view.any_between(t3, t3 + timedelta(days=1))
    assert view.first_entry().file_id == a["file_id"]
    assert view.last_entry().file_id == c["file_id"]

    newest, cursor = view.page(limit=2)
    assert [e.file_id for e in newest] == [c["file_id"], b["file_id"]] and cursor
    rest, end = view.page(limit=2, cursor=cursor)
    assert [e.file_id for e in rest] == [a["file_id"]] and end is None
    oldest, cursor = view.page(limit=2, order="asc")
    assert [e.file_id for e in oldest] == [a["file_id"], b["file_id"]]
    with pytest.raises(BadRequest):
        view.page(limit=2, cursor=cursor)  # an asc cursor for a desc walk

    stats = view.stats()
    assert (stats["files"], stats["bytes"]) == (3, 6)
    # The last batch's place intent stays until the next batch knows its rename durable.
    assert stats["pending_intents"] == len(view.pending_intents()) <= 1
    assert stats["wal_seq"] == view.wal_head().seq > 0


def test_mode_and_wal(store):
    view = ReadView.of_store(store)
    assert view.mode() == "rw" and view.element()["mode"] == "rw"
    head = view.wal_head()
    a = put(store, "a.txt")
    store.set_mode("ro", ALICE)
    assert view.mode() == "ro" and view.element()["changed_by"] == ALICE.id
    records = view.wal_after(head.seq)
    assert [(r["kind"], r["file_id"]) for r in records] == \
        [(W.FILE_CREATE, a["file_id"]), (W.ELEMENT_MODE, None)]
    assert [r["seq"] for r in records] == [head.seq + 1, head.seq + 2]
    assert view.wal_after(head.seq, limit=1) == records[:1]
    assert view.wal_after(head.seq + 2) == []
    assert view.wal_head().seq == head.seq + 2 and view.wal_head().hash != head.hash
    everything = view.wal_records()
    assert [r["seq"] for r in everything] == list(range(1, head.seq + 3))
    assert [r["seq"] for r in view.wal_records(head.seq + 1, "desc")] == \
        list(range(head.seq + 1, 0, -1))
    assert [r["seq"] for r in view.wal_records(10 ** 6, "desc")][0] == head.seq + 2
    assert view.wal_count() == head.seq + 2 and view.verify_wal() is None


def test_the_wal_reads_whole_across_sealed_segments(tmp_path):
    """Old records sealed into segment files and the LMDB tail read as one log, in the
    Store's process and (read-only) in a later one."""
    config = StoreConfig(data_dir=str(tmp_path / "data"), wal_segment_records=10)
    store = Store(config)
    try:
        for i in range(30):
            put(store, f"{i}.txt")
        assert store.maintain()["wal_records_sealed"] >= 10
    finally:
        store.close()
    with ReadView.open(config.data_dir) as view:
        head = view.wal_head().seq
        assert view.wal_count() == head == 31 and view.verify_wal() is None
        assert [r["seq"] for r in view.wal_records()] == list(range(1, head + 1))
        assert [r["seq"] for r in view.wal_records(12, "desc")] == list(range(12, 0, -1))
        assert [r["seq"] for r in view.wal_after(8, limit=4)] == [9, 10, 11, 12]
        assert view.stats()["files"] == 30


def test_a_snapshot_is_one_state(store):
    view = ReadView.of_store(store)
    a = put(store, "a.txt")
    with view.snapshot() as snap:
        before = snap.wal_head()
        b = put(store, "b.txt")  # committed by the group commit thread meanwhile
        assert snap.entry(b["file_id"]) is None
        assert [e.file_id for e in snap.entries()] == [a["file_id"]]
        assert snap.wal_head() == before and snap.stats()["files"] == 1
    assert view.entry(b["file_id"]) is not None and view.wal_head().seq > before.seq


def _place_pending(store, attr) -> tuple[str, str, str]:
    """Put a committed file back as if its move out of tmp/ were under way: data in tmp/,
    nothing in objects/. Returns (final path, tmp path, tmp name)."""
    entry = store.get(attr["file_id"])
    final = store.content_path(entry)
    tmp_name = "upload-in-flight.part"
    tmp = os.path.join(store.disks.get(entry.disk).tmp, tmp_name)
    os.rename(final, tmp)
    return final, tmp, tmp_name


def _write_intent(store, attr, **where) -> None:
    entry = store.get(attr["file_id"])
    with store.env.write() as txn:
        W.put_intent(txn, store.env, ids.file_id_key(entry.file_id), W.FILE_PLACE, W.SYSTEM,
                     file_id=entry.file_id, disk=entry.disk, rel=entry.rel, **where)


def _read_fd(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def test_content_location_follows_a_pending_place(store):
    view = ReadView.of_store(store)
    attr = put(store, "moving.txt", b"in flight")
    entry = view.entry(attr["file_id"])
    final = view.content_location(entry)
    assert final == store.content_path(entry) and final.startswith(store.data_dir)
    with store.env.write() as txn:   # as if the next batch had dropped it
        W.drop_intent(txn, store.env, ids.file_id_key(attr["file_id"]))
    assert view.place_intent(attr["file_id"]) is None

    final, tmp, tmp_name = _place_pending(store, attr)
    assert os.path.exists(tmp) and not os.path.exists(final)
    # No intent: nothing says where the file is, so the final path (which fails to open).
    assert view.content_location(entry) == final
    with pytest.raises(StoreCorrupt):
        view.open_content(entry)

    _write_intent(store, attr, tmp_name=tmp_name)   # the new format: a name inside tmp/
    assert view.place_intent(attr["file_id"])["tmp_name"] == tmp_name
    assert view.stats()["pending_intents"] == 1
    assert view.content_location(entry) == tmp
    assert _read_fd(view.open_content(entry)) == b"in flight"

    _write_intent(store, attr, tmp=tmp)             # the old format: an absolute path
    assert view.content_location(entry) == tmp
    assert _read_fd(view.open_content(entry)) == b"in flight"

    # A name that would leave tmp/ is not believed.
    _write_intent(store, attr, tmp_name="../" + L.OBJECTS + "/elsewhere")
    assert view.content_location(entry) == final

    # The rename lands: the final path again, intent or not.
    _write_intent(store, attr, tmp_name=tmp_name)
    os.rename(tmp, final)
    assert view.content_location(entry) == final
    assert _read_fd(view.open_content(entry)) == b"in flight"


def test_disk_roots_are_found_by_identity(store, tmp_path):
    attr = put(store, "far.txt", b"far away")
    [disk] = list(store.disks)
    late = str(tmp_path / "mounted-later")
    view = ReadView.over(store.env, [late])
    assert view.disk_roots() == {}
    entry = view.entry(attr["file_id"])
    with pytest.raises(DiskOffline):
        view.content_location(entry)
    os.symlink(disk.root, late)       # the disk shows up: looked for again on a miss
    assert view.disk_roots() == {}
    assert view.content_location(entry) == os.path.join(late, L.OBJECTS, entry.rel)
    assert view.disk_roots() == {disk.disk_id: late}


CHILD = textwrap.dedent("""
    import sys, time
    from artstored.engine import ReadView

    with ReadView.open(sys.argv[1]) as view:
        print("ready", view.stats()["files"], view.wal_head().seq, flush=True)
        deadline = time.monotonic() + 20
        while view.stats()["files"] == 0:
            if time.monotonic() > deadline:
                sys.exit("no commit seen")
            time.sleep(0.01)
        [entry] = view.entries()
        fd = view.open_content(entry)
        import os
        data = os.read(fd, 100)
        os.close(fd)
        print("seen", entry.file_id, view.wal_head().seq, view.mode(), data.decode(),
              view.content_location(entry), flush=True)
""")


def test_another_process_sees_a_commit(tmp_path):
    """A read-only view in a separate process, opened before the daemon's Store, sees a
    commit made later, after the data has outgrown the LMDB map the reader mapped (its
    next read adopts the new size) and on a disk root that did not exist when it opened."""
    data_dir = str(tmp_path / "data")
    small = 4 << 20
    S.Env(os.path.join(data_dir, "store.lmdb"), map_size=small).close()
    child = subprocess.Popen([sys.executable, "-c", CHILD, data_dir], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = None
    try:
        ready = child.stdout.readline().split()
        assert ready == ["ready", "0", "0"], child.stderr.read()
        store = Store(StoreConfig(data_dir=data_dir, map_size=small))
        if store.env.env.info()["map_size"] < 64 << 20:
            store.env.env.set_mapsize(64 << 20)
        with store.env.write() as txn:   # more pages than the child's map holds
            txn.put(b"test-filler", os.urandom(2 * small), db=store.env.dbs[S.DB_META])
        attr = put(store, "shared.txt", b"hello-from-the-writer")
        out, err = child.communicate(timeout=30)
        assert child.returncode == 0, err
        seen = out.split()
        head = ReadView.of_store(store).wal_head().seq
        entry = store.get(attr["file_id"])
        assert seen[:5] == ["seen", attr["file_id"], str(head), "rw", "hello-from-the-writer"]
        # objects/, or tmp/ if the child looked between the commit and the rename.
        assert seen[5] == store.content_path(entry) or \
            os.path.dirname(seen[5]) == store.disks.get(entry.disk).tmp
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if store is not None:
            store.close()


def test_open_refuses_a_directory_without_a_store(tmp_path):
    with pytest.raises(Exception) as info:
        ReadView.open(str(tmp_path))
    assert getattr(info.value, "code", None) == "no_store"


# --- the layering rule ----------------------------------------------------------------------

# Outside the engine nothing opens LMDB or knows a sub-database or key layout: reads go
# through ReadView. What is left, named with the reason, shrinks to nothing.
LAYOUT_WORDS = re.compile(r"^\s*import lmdb|lmdb_schema|\bS\.DB_|\bS\.META_|txn\.cursor|"
                          r"\.cursor\(db=|env\.read\(|\.env\.db\(|W\.read_from|W\.head\(|"
                          r"W\.intents\(|catalog\.(get|iterate|page|stats)\(", re.M)
NOT_YET = {
    # Accounts and revocations are written and read in their own sub-databases here; they
    # move into the engine with the write-side accounts store.
    "artstored/auth/accounts.py",
}


def test_nothing_outside_the_engine_reads_lmdb():
    offenders = []
    for top in ("artstored", "fuse", "index"):
        for dirpath, _, names in os.walk(os.path.join(ROOT, top)):
            for name in names:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, ROOT)
                if not name.endswith(".py") or rel.startswith("artstored/engine/") \
                        or rel in NOT_YET:
                    continue
                with open(path, encoding="utf-8") as f:
                    found = LAYOUT_WORDS.search(f.read())
                if found:
                    offenders.append(f"{rel}: {found.group(0).strip()}")
    assert not offenders, offenders
