"""Issue 3's three goals, each as a ratio against a reference measured in the same run:

- 1 GiB upload ÷ a bare aiohttp sink streaming to the same disk and fsyncing (goal ≥ 0.8)
- 1 GiB download ÷ reading the same file straight from disk, cold and warm (goal ≥ 0.8)
- durable 4 KiB uploads/s with 16 concurrent clients ÷ a Python loop doing write + fsync +
  rename + fsync(dir) per 4 KiB file on the same disk (goal ≥ 1.0: group commit)
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import subprocess
import sys
import time

from .common import (Server, drop_caches, free_port, fresh_filesystem, median,
                     read_file_throughput)

MIB = 1 << 20
BLOCK = 1 << 20


def _post(port: int, path: str, payload: memoryview, headers: dict, head: bytes = b"",
          tail: bytes = b"") -> float:
    """Seconds to POST ``head + payload + tail`` and get the answer (payload from memory)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.putrequest("POST", path)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.putheader("Content-Length", str(len(head) + len(payload) + len(tail)))
    conn.endheaders()
    started = time.perf_counter()
    conn.send(head)
    for i in range(0, len(payload), BLOCK):
        conn.sock.sendall(payload[i:i + BLOCK])
    conn.send(tail)
    resp = conn.getresponse()
    resp.read()
    elapsed = time.perf_counter() - started
    conn.close()
    assert resp.status == 201, resp.status
    return elapsed


def _get(port: int, path: str, headers: dict) -> tuple[float, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    buf = bytearray(BLOCK)
    started = time.perf_counter()
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    assert resp.status == 200, resp.status
    total = 0
    while n := resp.readinto(buf):
        total += n
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed, total


def bench_large(store: Server, sink: Server, work: str, size: int, repeats: int) -> dict:
    seed = os.urandom(BLOCK)
    payload = memoryview(b"".join(i.to_bytes(8, "big") + seed[8:] for i in range(size // BLOCK)))
    boundary = "bench-" + secrets.token_hex(8)
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"payload.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    up_store, up_sink = [], []
    for _ in range(repeats):
        # Alternate, each after emptying the page cache, so that both meet the same memory
        # and disk state: writing into a full page cache costs reclaim, into an empty one not.
        drop_caches()
        up_sink.append(size / _post(sink.port, "/upload", payload, {}))
        drop_caches()
        up_store.append(size / _post(store.port, "/api/v1/files", payload,
                                     {"Authorization": f"Bearer {store.token}",
                                      "Content-Type": f"multipart/form-data; boundary={boundary}"},
                                     head, tail))
    del payload
    files = store.list_files()
    file_id = files[0]["file_id"]
    stored_path = store.path_of(files[0])
    auth = {"Authorization": f"Bearer {store.token}"}
    down_cold, direct_cold, down_warm, direct_warm = [], [], [], []
    for _ in range(repeats):
        if drop_caches():
            t, n = _get(store.port, f"/api/v1/files/{file_id}/download", auth)
            down_cold.append(n / t)
            drop_caches()
            direct_cold.append(read_file_throughput(stored_path))
        t, n = _get(store.port, f"/api/v1/files/{file_id}/download", auth)
        down_warm.append(n / t)
        direct_warm.append(read_file_throughput(stored_path))
    out = {
        "upload_MBps": median(up_store) / 1e6, "sink_MBps": median(up_sink) / 1e6,
        "upload_ratio": median(up_store) / median(up_sink),
        "download_warm_MBps": median(down_warm) / 1e6,
        "direct_warm_MBps": median(direct_warm) / 1e6,
        "download_warm_ratio": median(down_warm) / median(direct_warm),
    }
    if down_cold:
        out.update({"download_cold_MBps": median(down_cold) / 1e6,
                    "direct_cold_MBps": median(direct_cold) / 1e6,
                    "download_cold_ratio": median(down_cold) / median(direct_cold)})
    return out


def python_durable_loop(directory: str, count: int, size: int = 4096) -> float:
    """Files per second: write + fsync + rename + fsync(dir), one file at a time."""
    os.makedirs(directory, exist_ok=True)
    data = os.urandom(size)
    started = time.perf_counter()
    for i in range(count):
        tmp = os.path.join(directory, f".{i}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, os.path.join(directory, f"{i}.bin"))
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)
    return count / (time.perf_counter() - started)


def loadgen(spec: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.loadgen"], input=json.dumps(spec),
                         capture_output=True, check=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return json.loads(out.stdout)


def bench_small(store: Server, sink: Server, work: str, count: int, concurrency: int) -> dict:
    data = os.urandom(4096)
    boundary = "small-" + secrets.token_hex(6)
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"small.bin\"\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    body_file = os.path.join(work, "small-body")
    raw_file = os.path.join(work, "small-raw")
    with open(body_file, "wb") as f:
        f.write(body)
    with open(raw_file, "wb") as f:
        f.write(data)
    loop_rate = python_durable_loop(os.path.join(work, "loop"), count)
    store_res = loadgen({"base": f"http://127.0.0.1:{store.port}", "path": "/api/v1/files",
                         "method": "POST", "body_file": body_file,
                         "headers": {"Authorization": f"Bearer {store.token}",
                                     "Content-Type": f"multipart/form-data; boundary={boundary}"},
                         "concurrency": concurrency, "requests": count})
    sink_res = loadgen({"base": f"http://127.0.0.1:{sink.port}", "path": "/upload",
                        "method": "POST", "body_file": raw_file, "concurrency": concurrency,
                        "requests": count})
    assert store_res["errors"] == 0 and sink_res["errors"] == 0, (store_res, sink_res)
    return {"store_per_s": store_res["ops_per_s"], "store_p50_ms": store_res["p50_ms"],
            "store_p99_ms": store_res["p99_ms"], "python_loop_per_s": loop_rate,
            "sink_per_s": sink_res["ops_per_s"],
            "ratio_vs_loop": store_res["ops_per_s"] / loop_rate,
            "ratio_vs_sink": store_res["ops_per_s"] / sink_res["ops_per_s"]}


def run(work: str, *, size: int, repeats: int, small_count: int, concurrency: int = 16,
        sync_method: str | None = None) -> dict:
    env = {"ARTSTORE_STORAGE_SYNC_METHOD": sync_method} if sync_method else {}
    # Room for every upload of both servers, twice over.
    with fresh_filesystem(work, max(4 << 30, 4 * size * repeats + (2 << 30))) as (fs, kind):
        store = Server.artstored(os.path.join(fs, "store"), free_port(), env=env)
        sink = Server.sink(os.path.join(fs, "sink"), free_port())
        try:
            large = bench_large(store, sink, fs, size, repeats)
            small = bench_small(store, sink, fs, small_count, concurrency)
            large["daemon_rss_MiB"] = store.rss() / MIB
        finally:
            store.stop()
            sink.stop()
    return {"large": large, "small": small, "filesystem": kind}
