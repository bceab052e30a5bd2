"""Sealed WAL segments: LMDB keeps the tail, the files keep the rest, one hash chain."""

import os

from artstored.engine import Actor, Store, StoreConfig, UploadRequest
from artstored.engine import lmdb_schema as S
from artstored.engine import wal as W
from artstored.engine import walseg

ALICE = Actor("cl_alice", "alice", "user")
SEGMENT = 40


def _store(tmp_path) -> Store:
    return Store(StoreConfig(data_dir=str(tmp_path / "data"), wal_segment_records=SEGMENT))


def _fill(store, n: int) -> None:
    for i in range(n):
        store.ingest([b"%d" % i], UploadRequest(f"{i}.txt"), ALICE)


def _lmdb_wal_entries(store) -> int:
    with store.env.read() as txn:
        return txn.stat(store.env.db(S.DB_WAL))["entries"]


def test_sealing_keeps_lmdb_bounded_and_the_log_whole(tmp_path):
    store = _store(tmp_path)
    try:
        _fill(store, 300)
        sealed = store.maintain()["wal_records_sealed"]
        assert sealed >= 200 and sealed % SEGMENT == 0
        assert _lmdb_wal_entries(store) < 2 * SEGMENT
        with store.env.read() as txn:
            head, _ = W.head(txn, store.env)
            assert W.count(txn, store.env) == head
            seqs = [r["seq"] for r in W.read_from(txn, store.env, 0, limit=10_000)]
            assert seqs == list(range(1, head + 1))
            assert [r["seq"] for r in W.read_from(txn, store.env, 57, limit=5)] == \
                [58, 59, 60, 61, 62]
            down = [r["seq"] for r in W.records(txn, store.env, order="desc")]
            assert down == list(range(head, 0, -1))
            assert [r["seq"] for r in W.records(txn, store.env, 100, "desc")][:3] == \
                [100, 99, 98]
            assert W.verify_chain(txn, store.env) is None
        segments = sorted(os.listdir(walseg.directory(store.env)))
        assert len(segments) == sealed // SEGMENT
        with open(os.path.join(walseg.directory(store.env), segments[0]), "rb") as f:
            assert f.read(len(walseg.MAGIC)) == walseg.MAGIC
        # Sealing again with nothing new to seal changes nothing.
        assert store.maintain()["wal_records_sealed"] == 0
        _fill(store, 100)  # the chain goes on across the seal
        store.maintain()
        with store.env.read() as txn:
            assert W.verify_chain(txn, store.env) is None
    finally:
        store.close()


def test_an_altered_or_missing_segment_is_named(tmp_path):
    store = _store(tmp_path)
    try:
        _fill(store, 200)
        store.maintain()
        folder = walseg.directory(store.env)
        first, second = sorted(os.listdir(folder))[:2]
        path = os.path.join(folder, second)
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:       # flip one byte inside the tenth record
            data = bytearray(f.read())
        at = len(walseg.MAGIC)
        for _ in range(9):
            at += 4 + int.from_bytes(data[at:at + 4], "big")
        data[at + 20] ^= 0x01
        with open(path, "wb") as f:
            f.write(data)
        start = int(second.split("-")[0])
        with store.env.read() as txn:
            assert W.verify_chain(txn, store.env) == start + 9
        os.unlink(path)
        with store.env.read() as txn:
            assert W.verify_chain(txn, store.env) == start
    finally:
        store.close()


def test_a_seal_cut_short_leaves_every_record_once(tmp_path):
    store = _store(tmp_path)
    try:
        _fill(store, 100)
        store.maintain()
        with store.env.read() as txn:
            through = walseg.sealed(txn, store.env, W.unpack)["through"]
            head, _ = W.head(txn, store.env)
        # A crash after the segment file was renamed but before LMDB recorded it: the file
        # duplicates records still in the tail.
        leftover = os.path.join(walseg.directory(store.env),
                                walseg.segment_name(through + 1, through + SEGMENT))
        with open(leftover, "wb") as f:
            f.write(walseg.MAGIC + b"\0\0\0\1x")
        with store.env.read() as txn:
            seqs = [r["seq"] for r in W.read_from(txn, store.env, 0, limit=10_000)]
            assert seqs == list(range(1, head + 1)), "a record read twice or lost"
            assert W.verify_chain(txn, store.env) is None
        _fill(store, 2 * SEGMENT)
        store.maintain()  # seals over it; the leftover is replaced by the real segment
        with store.env.read() as txn:
            assert W.verify_chain(txn, store.env) is None
    finally:
        store.close()


def test_offline_audit_verify_reads_the_segments(tmp_path):
    import subprocess
    import sys

    store = _store(tmp_path)
    _fill(store, 150)
    store.maintain()
    store.close()
    artstore = os.path.join(os.path.dirname(sys.executable), "artstore")
    ok = subprocess.run([artstore, "audit", "verify", "--data-dir", str(tmp_path / "data"),
                         "--json"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    folder = os.path.join(str(tmp_path / "data"), "wal")
    victim = sorted(os.listdir(folder))[0]
    os.unlink(os.path.join(folder, victim))
    bad = subprocess.run([artstore, "audit", "verify", "--data-dir", str(tmp_path / "data"),
                          "--json"], capture_output=True, text=True)
    assert bad.returncode != 0 and '"broken_seq": 1' in bad.stdout.replace(" ", " "), \
        bad.stdout + bad.stderr
