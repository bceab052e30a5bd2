"""Small uploads do not wait for big ones (issue 16): 4 KiB upload latency from one client
while a large upload streams into the same daemon, against the same client's latency idle.

    python -m bench.mixed [--quick] [--big BYTES] [--small N] [--repeats R] [--json PATH]

One daemon on a fresh ext4 image. Each repeat (full 3, quick 3; idle and busy
interleaved): ``--small`` 4 KiB uploads one after another with nothing else running
(idle), then the same while one ``--big`` upload (full 1 GiB, quick 512 MiB) streams
from another connection as fast as it can (busy; the small uploads start once the big one
is under way and stop when it ends). A busy p99 counts only uploads made while the big
one streamed. Goal: busy p99 <= 2x idle p99 (medians of the repeats). Exit status 1 if
missed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import threading
import time

from .common import Server, free_port, fresh_filesystem
from .core import _post

GOAL = 2.0
KIB, MIB = 1 << 10, 1 << 20


def _headers(store: Server) -> tuple[dict, bytes, bytes]:
    boundary = "b-" + secrets.token_hex(8)
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"o.bin\"\r\n\r\n").encode()
    return ({"Authorization": f"Bearer {store.token}",
             "Content-Type": f"multipart/form-data; boundary={boundary}"},
            head, f"\r\n--{boundary}--\r\n".encode())


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def small_uploads(store: Server, count: int, until: threading.Event | None = None
                  ) -> list[float]:
    """Seconds of each 4 KiB upload, one after another (``count`` of them, or until
    ``until`` is set)."""
    headers, head, tail = _headers(store)
    payload = memoryview(os.urandom(4 * KIB))
    out = []
    while len(out) < count and not (until is not None and until.is_set()):
        out.append(_post(store.port, "/api/v1/files", payload, headers, head, tail))
    return out


def busy(store: Server, big: int, count: int) -> tuple[list[float], float]:
    """4 KiB upload latencies while one ``big`` upload streams; (latencies, big seconds)."""
    headers, head, tail = _headers(store)
    payload = memoryview(bytearray(os.urandom(MIB)) * (big // MIB))
    done, took = threading.Event(), []

    def stream():
        try:
            took.append(_post(store.port, "/api/v1/files", payload, headers, head, tail))
        finally:
            done.set()
    t = threading.Thread(target=stream)
    t.start()
    time.sleep(0.2)         # under way, with dirty pages behind it
    latencies = small_uploads(store, 10 ** 9, until=done)
    t.join()
    if not took:
        raise RuntimeError("the big upload failed")
    return latencies, took[0]


def run(work: str, *, big: int, small: int, repeats: int) -> dict:
    runs = []
    with fresh_filesystem(work, max(4 << 30, 2 * big * repeats + (1 << 30))) as (fs, kind):
        store = Server.artstored(os.path.join(fs, "store"), free_port())
        try:
            small_uploads(store, 20)                    # warm
            for _ in range(repeats):
                idle = small_uploads(store, small)
                during, big_s = busy(store, big, small)
                runs.append({"idle_p50_ms": statistics.median(idle) * 1e3,
                             "idle_p99_ms": _p99(idle) * 1e3,
                             "busy_p50_ms": statistics.median(during) * 1e3,
                             "busy_p99_ms": _p99(during) * 1e3, "busy_count": len(during),
                             "big_MBps": big / big_s / 1e6})
        finally:
            store.stop()
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    med["ratio"] = med["busy_p99_ms"] / med["idle_p99_ms"]
    return {"runs": runs, "median": med, "big": big, "small": small, "filesystem": kind}


def report(res: dict) -> str:
    m = res["median"]
    lines = [f"4 KiB uploads (one client) idle vs while a {res['big'] >> 20} MiB upload "
             f"streams; medians of {len(res['runs'])} repeats, {res['filesystem']}:",
             f"  idle p50 {m['idle_p50_ms']:.1f} ms p99 {m['idle_p99_ms']:.1f} ms; busy p50 "
             f"{m['busy_p50_ms']:.1f} ms p99 {m['busy_p99_ms']:.1f} ms "
             f"({m['busy_count']:.0f} uploads during it); the big upload "
             f"{m['big_MBps']:.0f} MB/s",
             f"  goal: busy p99 <= {GOAL}x idle p99: "
             f"{'meets' if m['ratio'] <= GOAL else 'BELOW goal'} ({m['ratio']:.2f}x)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--big", type=int, default=None, help="bytes (1 GiB; quick 512 MiB)")
    parser.add_argument("--small", type=int, default=None, help="idle uploads (300; quick 100)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default=os.path.join(os.getcwd(), "bench", "work", "mixed"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    big = args.big or ((512 if args.quick else 1024) * MIB)
    small = args.small or (100 if args.quick else 300)
    res = run(args.work, big=big, small=small, repeats=args.repeats)
    print(report(res), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if res["median"]["ratio"] <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
