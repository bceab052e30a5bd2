"""What durability costs in space and in latency (issue 11's figures):

- LMDB bytes per file at 1,000,000 files: the catalog plus the WAL tail, with old WAL
  records sealed into segment files (their bytes per file printed beside). Records are
  written through the engine's own catalog and WAL functions in batches, with attr records
  shaped like real uploads, so the figure is the store's, without making a million files.
  Goal: LMDB ≤ 3 KiB per file, and its WAL tail bounded (fewer than 2 × segment records).
- 4 KiB upload p99 while an online rebuild walks 100,000 files ÷ the same p99 idle, on
  the same daemon and disk (goal ≤ 5: the rebuild commits in small batches, so uploads go
  on; before batching a rebuild of 25,000 files held every upload for seconds).
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

from .common import Server, free_port, fresh_filesystem

GOAL_LMDB_BYTES_PER_FILE = 3 * 1024
GOAL_REBUILD_P99_RATIO = 5.0


def _attr_like(i: int, file_id: str, now: str) -> dict:
    return {"schema_version": "2.0", "file_id": file_id,
            "original_filename": f"scan-{i:07d}.pdf",
            "storage_filename": f"scan-{i:07d}_ingest_20261127T120000_{file_id}.pdf",
            "file_size": 180_000 + i % 5000, "content_type": "application/pdf",
            "created_at": now, "created_by_id": "cl_ingest", "created_by_username": "ingest",
            "description": f"Scanned record {i} of the finance department, box {i // 100}",
            "version": 1, "checksum_sha256": secrets.token_hex(32),
            "custom_attributes": {"department": "finance", "box": str(i // 100)},
            "xxh3_128": secrets.token_hex(16), "origin_node": "n" * 26,
            "retention_policy": "permanent", "expires_at": None, "updated_at": None,
            "updated_by_id": None, "updated_by_username": None,
            "signature": {"alg": "Ed25519", "key_id": "k" * 16, "value": "s" * 86}}


def lmdb_bytes_per_file(work: str, files: int, segment_records: int) -> dict:
    from artstored.engine import Store, StoreConfig, catalog, ids
    from artstored.engine import wal as W
    from artstored.engine.catalog import CatalogEntry

    store = Store(StoreConfig(data_dir=os.path.join(work, "data"),
                              wal_segment_records=segment_records))
    actor = W.Actor("cl_ingest", "ingest", "user")
    started = time.perf_counter()
    try:
        now = "2026-11-27T12:00:00.000000Z"
        for start in range(0, files, 1000):
            with store.env.write() as txn:
                for i in range(start, min(files, start + 1000)):
                    file_id = ids.new_file_id()
                    attr = _attr_like(i, file_id, now)
                    entry = CatalogEntry(attr=attr, disk="d" * 12,
                                         rel=f"2026/11/27/12/{attr['storage_filename']}")
                    catalog.put(txn, store.env, entry)
                    W.append(txn, store.env, W.FILE_CREATE, actor, file_id=file_id,
                             data={"attr": attr, "disk": entry.disk, "rel": entry.rel})
            if start % (20 * segment_records) == 0:
                store.maintain()
        store.maintain()
        with store.env.read() as txn:
            tail = txn.stat(store.env.db(b"wal"))["entries"]
        lmdb = store.env.used_bytes()
        seg_dir = os.path.join(store.data_dir, "wal")
        segments = sum(os.path.getsize(os.path.join(seg_dir, n)) for n in os.listdir(seg_dir)) \
            if os.path.isdir(seg_dir) else 0
    finally:
        store.close()
    return {"files": files, "lmdb_bytes": lmdb, "lmdb_bytes_per_file": lmdb / files,
            "wal_tail_records": tail, "segment_records": segment_records,
            "segment_bytes_per_file": segments / files,
            "seconds": time.perf_counter() - started}


def _upload(port: int, token: str, body: bytes, ctype: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    started = time.perf_counter()
    conn.request("POST", "/api/v1/files", body=body,
                 headers={"Content-Type": ctype, "Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    resp.read()
    elapsed = time.perf_counter() - started
    conn.close()
    assert resp.status == 201, resp.status
    return elapsed


def _multipart(data: bytes) -> tuple[bytes, str]:
    b = "b" + secrets.token_hex(8)
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + \
        f"\r\n--{b}--\r\n".encode()
    return body, f"multipart/form-data; boundary={b}"


def _p99(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))]


def _populate(data_dir: str, files: int) -> None:
    """``files`` real uploads (data + sidecar) through the engine, 16 at a time."""
    from artstored.engine import Actor, Store, StoreConfig, UploadRequest

    store = Store(StoreConfig(data_dir=data_dir))
    actor = Actor("cl_bench", "bench", "user")
    try:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: store.ingest([b"%07d" % i], UploadRequest(f"{i}.txt"),
                                                 actor), range(files)))
    finally:
        store.close()


def upload_p99_during_rebuild(work: str, files: int, samples: int) -> dict:
    data_dir = os.path.join(work, "data")
    started = time.perf_counter()
    _populate(data_dir, files)
    populate_s = time.perf_counter() - started
    port = free_port()
    server = Server.artstored(data_dir, port)
    try:
        body, ctype = _multipart(os.urandom(4096))
        for _ in range(20):  # warm up
            _upload(port, server.token, body, ctype)
        idle = [_upload(port, server.token, body, ctype) for _ in range(samples)]
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("POST", "/api/v1/element/rebuild",
                     headers={"Authorization": f"Bearer {server.token}"})
        job = json.loads(conn.getresponse().read())
        conn.close()
        during: list[float] = []
        rebuild_started = time.perf_counter()
        state = "running"
        while state == "running":
            during.append(_upload(port, server.token, body, ctype))
            if len(during) % 10 == 0:
                conn = http.client.HTTPConnection("127.0.0.1", port)
                conn.request("GET", f"/api/v1/jobs/{job['job_id']}",
                             headers={"Authorization": f"Bearer {server.token}"})
                state = json.loads(conn.getresponse().read())["state"]
                conn.close()
        rebuild_s = time.perf_counter() - rebuild_started
    finally:
        server.stop()
    idle_p99, during_p99 = _p99(idle), _p99(during)
    return {"files": files, "populate_seconds": populate_s, "rebuild_seconds": rebuild_s,
            "idle_p99_ms": idle_p99 * 1000, "during_p99_ms": during_p99 * 1000,
            "uploads_during": len(during), "p99_ratio": during_p99 / idle_p99}


def run(work: str, *, quick: bool = False) -> dict:
    os.makedirs(work, exist_ok=True)
    files = 20_000 if quick else 1_000_000
    rebuild_files = 2_000 if quick else 100_000
    with fresh_filesystem(os.path.join(work, "lmdb"), 16 << 30) as (mount, fs):
        space = lmdb_bytes_per_file(mount, files, 2_000 if quick else 100_000)
        space["filesystem"] = fs
    with fresh_filesystem(os.path.join(work, "rebuild"), 8 << 30) as (mount, fs):
        rebuild = upload_p99_during_rebuild(mount, rebuild_files, 100 if quick else 500)
        rebuild["filesystem"] = fs
    return {"space": space, "rebuild": rebuild}


def report(result: dict) -> str:
    s, r = result["space"], result["rebuild"]
    ok_space = s["lmdb_bytes_per_file"] <= GOAL_LMDB_BYTES_PER_FILE and \
        s["wal_tail_records"] < 2 * s["segment_records"]
    ok_rebuild = r["p99_ratio"] <= GOAL_REBUILD_P99_RATIO
    return "\n".join([
        f"LMDB at {s['files']:,} files: {s['lmdb_bytes_per_file']:.0f} bytes/file "
        f"(WAL tail {s['wal_tail_records']:,} records; sealed segments "
        f"{s['segment_bytes_per_file']:.0f} bytes/file) — "
        f"{'meets' if ok_space else 'BELOW'} goal ≤ {GOAL_LMDB_BYTES_PER_FILE} and a bounded tail",
        f"4 KiB upload p99 during a rebuild of {r['files']:,} files: {r['during_p99_ms']:.1f} ms "
        f"vs {r['idle_p99_ms']:.1f} ms idle = {r['p99_ratio']:.2f}× "
        f"({r['uploads_during']} uploads during {r['rebuild_seconds']:.1f} s) — "
        f"{'meets' if ok_rebuild else 'BELOW'} goal ≤ {GOAL_REBUILD_P99_RATIO}×",
    ])


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(prog="bench.durability")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--work", default=os.path.join(os.getcwd(), "bench", "work", "durability"))
    args = p.parse_args()
    print(report(run(args.work, quick=args.quick)))
