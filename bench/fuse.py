"""The FUSE view against reading the files directly, in the same run:

- sequential read of a 1 GiB file, cold and warm page cache (goals ≥ 0.8 cold, ≥ 0.75 warm)
- ``ls -l`` of a directory of 10,000 files (goal < 0.5 s)
- ``find by-id | wc -l`` over 100,000 files (goal < 5 s)
- 4 KiB random reads per second over 1,000 small files, ÷ direct
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

from .common import drop_caches, read_file_throughput

MIB = 1 << 20


def _mount(data_dir: str, mountpoint: str) -> subprocess.Popen:
    os.makedirs(mountpoint, exist_ok=True)
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "artstore"), "mount",
                             "--data-dir", data_dir, mountpoint],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (os.path.ismount(mountpoint) and os.path.exists(mountpoint + "/README")):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("mount did not come up")
        time.sleep(0.05)
    return proc


def _unmount(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def _ingest_many(store, items) -> list[dict]:
    """Upload (name, bytes) pairs through the engine, all in flight at once (group commit)."""
    from artstored.engine import Actor, UploadRequest

    actor = Actor("cl_bench", "bench", "admin")
    futures = [store.commit_upload(store.prepare_buffered([data], UploadRequest(name), actor))
               for name, data in items]
    return [f.result() for f in futures]


def _uuid7_at(moment: datetime) -> str:
    """A UUIDv7 for a past moment (ids.new_file_id keeps ids increasing, so it would give a
    backdated record the current time)."""
    ms = int(moment.timestamp() * 1000)
    rand = int.from_bytes(os.urandom(10), "big")
    value = ms << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 | 0b10 << 62 | (rand & (2**62 - 1))
    return str(uuid.UUID(int=value))


def _fill_catalog(store, count: int, day: datetime | None, prefix: str) -> None:
    """Catalog entries only (no content): enough for ls and find, which read no bytes."""
    from artstored.engine import attrs as A
    from artstored.engine import catalog
    from artstored.engine.catalog import CatalogEntry

    disk = next(iter(store.disks)).disk_id
    start = day or datetime(2020, 1, 1, tzinfo=timezone.utc)
    span = 80_000 if day else 5 * 365 * 86400
    with store.env.write() as txn:
        for i in range(count):
            created = start + timedelta(seconds=span * i / count)
            file_id = _uuid7_at(created)
            attr = {"schema_version": "2.0", "file_id": file_id,
                    "original_filename": f"{prefix}-{i:06d}.pdf",
                    "storage_filename": f"x_{file_id}.pdf", "file_size": 1000 + i,
                    "content_type": "application/pdf", "created_at": A.format_time(created),
                    "created_by_id": "cl_bench", "created_by_username": "bench",
                    "description": "", "version": 1, "checksum_sha256": "0" * 64,
                    "custom_attributes": {}, "retention_policy": "permanent",
                    "expires_at": None}
            catalog.put(txn, store.env, CatalogEntry(attr=attr, disk=disk,
                                                     rel=f"gen/{file_id}.pdf"))


def _timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def _random_reads(paths: list[str], seconds: float, rng: random.Random) -> float:
    fds = [os.open(p, os.O_RDONLY) for p in paths]
    sizes = [os.fstat(fd).st_size for fd in fds]
    n = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(100):
            i = rng.randrange(len(fds))
            os.pread(fds[i], 4096, rng.randrange(0, max(1, sizes[i] - 4096)) & ~4095)
            n += 1
    elapsed = time.perf_counter() - started
    for fd in fds:
        os.close(fd)
    return n / elapsed


def run(work: str, *, big: int = 1 << 30, small_files: int = 1000, dir_files: int = 10_000,
        tree_files: int = 100_000) -> dict:
    from artstored.engine.store import Store, StoreConfig

    data_dir = os.path.join(work, "fuse-" + uuid.uuid4().hex[:6])
    store = Store(StoreConfig(data_dir=data_dir, map_size=1 << 34))
    try:
        seed = os.urandom(MIB)
        writer = store.begin_upload()
        for i in range(big // MIB):
            writer.write(i.to_bytes(8, "big") + seed[8:])
        writer.finish()
        from artstored.engine import Actor, UploadRequest
        actor = Actor("cl_bench", "bench", "admin")
        big_attr = store.commit_upload(store.prepare_upload(
            writer, UploadRequest("big.bin"), actor)).result()
        small = _ingest_many(store, [(f"s{i}.bin", os.urandom(64 * 1024))
                                     for i in range(small_files)])
        direct_big = store.content_path(store.get(big_attr["file_id"]))
        direct_small = [store.content_path(store.get(a["file_id"])) for a in small]
        day = datetime(2021, 6, 15, 1, tzinfo=timezone.utc)
        _fill_catalog(store, dir_files, day, "day")
        _fill_catalog(store, tree_files - dir_files - small_files - 1, None, "tree")
    finally:
        store.close()

    mountpoint = os.path.join(work, "mnt-" + uuid.uuid4().hex[:6])
    proc = _mount(data_dir, mountpoint)
    try:
        via_big = os.path.join(mountpoint, "by-id", big_attr["file_id"] + ".bin")
        out = {}
        cold_fuse, cold_direct, warm_fuse, warm_direct = [], [], [], []
        for _ in range(2):
            if drop_caches():
                cold_fuse.append(read_file_throughput(via_big))
                drop_caches()
                cold_direct.append(read_file_throughput(direct_big))
            read_file_throughput(via_big)
            warm_fuse.append(read_file_throughput(via_big))
            read_file_throughput(direct_big)
            warm_direct.append(read_file_throughput(direct_big))
        if cold_fuse:
            out.update(read_cold_MBps=max(cold_fuse) / 1e6, direct_cold_MBps=max(cold_direct) / 1e6,
                       read_cold_ratio=max(cold_fuse) / max(cold_direct))
        out.update(read_warm_MBps=max(warm_fuse) / 1e6, direct_warm_MBps=max(warm_direct) / 1e6,
                   read_warm_ratio=max(warm_fuse) / max(warm_direct))
        day_dir = os.path.join(mountpoint, "by-date", "2021", "06", "15")
        _timed(["ls", "-l", day_dir])  # first listing warms LMDB pages
        out["ls_l_10k_seconds"] = min(_timed(["ls", "-l", day_dir]) for _ in range(3))
        out["find_100k_seconds"] = _timed(["sh", "-c",
                                           f"find '{mountpoint}/by-id' | wc -l > /dev/null"])
        via_small = [os.path.join(mountpoint, "by-id", a["file_id"] + ".bin") for a in small]
        rng = random.Random(5)
        for path in via_small + direct_small:  # both page caches warm, like for like
            with open(path, "rb") as fh:
                fh.read()
        fuse_rate = _random_reads(via_small, 2.0, rng)
        direct_rate = _random_reads(direct_small, 2.0, rng)
        out.update(random_4k_fuse_per_s=fuse_rate, random_4k_direct_per_s=direct_rate,
                   random_4k_ratio=fuse_rate / direct_rate)
        return out
    finally:
        _unmount(proc)
        os.rmdir(mountpoint)
        import shutil
        shutil.rmtree(data_dir, ignore_errors=True)
