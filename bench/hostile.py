"""A flood of wrong-secret sign-ins must not slow anyone else down (issue 12's figures).

One daemon on a fresh filesystem. The same steady workload runs twice, idle and under a
flood: one client uploading 4 KiB files and one downloading 64 KiB files, each in a loop.
The flood is wrong-secret sign-ins with a new client id each time, from 254 source
addresses (127.0.0.2-255), at a fixed rate. Printed: upload and download p99 in both runs,
their ratios (goal ≤ 1.5), the daemon's largest RSS during the flood (goal < 300 MiB), and
how the token endpoint answered the flood (401, 429, 503).

    python -m bench.hostile [--quick] [--seconds S] [--rate R]
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
import urllib.parse

from .common import Server, free_port, fresh_filesystem
from .durability import _multipart

GOAL_P99_RATIO = 1.5
GOAL_RSS_MIB = 300


def _p99(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))] * 1000 if values else 0.0


class Steady:
    """One uploader and one downloader in loops, recording latencies."""

    def __init__(self, server: Server, file_ids: list[str]):
        self.server = server
        self.file_ids = file_ids
        self.stop = threading.Event()
        self.uploads: list[float] = []
        self.downloads: list[float] = []

    def _request(self, method, path, body=None, headers=None) -> float:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
        headers = dict(headers or {}, Authorization=f"Bearer {self.server.token}")
        started = time.perf_counter()
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        elapsed = time.perf_counter() - started
        conn.close()
        assert resp.status in (200, 201), resp.status
        return elapsed

    def upload_loop(self):
        body, ctype = _multipart(os.urandom(4096))
        while not self.stop.is_set():
            self.uploads.append(self._request("POST", "/api/v1/files", body,
                                              {"Content-Type": ctype}))

    def download_loop(self):
        i = 0
        while not self.stop.is_set():
            fid = self.file_ids[i % len(self.file_ids)]
            i += 1
            self.downloads.append(self._request("GET", f"/api/v1/files/{fid}/download"))

    def run(self, seconds: float) -> dict:
        threads = [threading.Thread(target=self.upload_loop),
                   threading.Thread(target=self.download_loop)]
        for t in threads:
            t.start()
        time.sleep(seconds)
        self.stop.set()
        for t in threads:
            t.join(60)
        return {"upload_p99_ms": _p99(self.uploads), "download_p99_ms": _p99(self.downloads),
                "uploads": len(self.uploads), "downloads": len(self.downloads)}


class Flood:
    """Wrong-secret sign-ins, a new client id each, from 254 addresses, at ``rate``/s."""

    def __init__(self, port: int, rate: float, threads: int = 64):
        self.port = port
        self.rate = rate
        self.threads = threads
        self.stop = threading.Event()
        self.statuses: dict[int, int] = {}
        self._lock = threading.Lock()

    def _one(self, n: int) -> int:
        source = f"127.0.0.{2 + n % 254}"
        form = urllib.parse.urlencode({"grant_type": "client_credentials",
                                       "client_id": f"cl_flood{n:012d}",
                                       "client_secret": "wrong"}).encode()
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30,
                                        source_address=(source, 0))
        try:
            sock.sendall(b"POST /api/v1/auth/token HTTP/1.1\r\nHost: x\r\n"
                         b"Connection: close\r\nContent-Type: application/x-www-form-urlencoded"
                         + f"\r\nContent-Length: {len(form)}\r\n\r\n".encode() + form)
            head = sock.recv(64)
        finally:
            sock.close()
        return int(head.split(b" ", 2)[1]) if head else 0

    def worker(self, k: int):
        n = k
        interval = self.threads / self.rate
        next_at = time.monotonic()
        while not self.stop.is_set():
            try:
                status = self._one(n)
            except OSError:
                status = 0
            with self._lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1
            n += self.threads
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.worker, args=(k,), daemon=True)
                   for k in range(self.threads)]
        for t in threads:
            t.start()
        return threads


def run(work: str, *, quick: bool = False, seconds: float | None = None,
        rate: float = 200.0) -> dict:
    seconds = seconds or (3.0 if quick else 20.0)
    with fresh_filesystem(os.path.join(work, "hostile"), 4 << 30) as (mount, fs):
        port = free_port()
        server = Server.artstored(os.path.join(mount, "data"), port)
        try:
            body, ctype = _multipart(os.urandom(65536))
            ids = []
            for _ in range(50):
                conn = http.client.HTTPConnection("127.0.0.1", port)
                conn.request("POST", "/api/v1/files", body=body,
                             headers={"Content-Type": ctype,
                                      "Authorization": f"Bearer {server.token}"})
                resp = conn.getresponse()
                import json
                ids.append(json.loads(resp.read())["file_id"])
                conn.close()
            idle = Steady(server, ids).run(seconds)
            flood = Flood(port, rate)
            threads = flood.start()
            rss = [0]
            sampling = threading.Event()

            def sample():
                while not sampling.is_set():
                    rss[0] = max(rss[0], server.rss())
                    time.sleep(0.1)
            sampler = threading.Thread(target=sample)
            sampler.start()
            time.sleep(1.0)   # the flood is at full rate before measuring
            flooded = Steady(server, ids).run(seconds)
            flood.stop.set()
            for t in threads:
                t.join(30)
            sampling.set()
            sampler.join()
        finally:
            server.stop()
    return {"filesystem": fs, "seconds": seconds, "flood_rate": rate, "idle": idle,
            "flood": flooded, "flood_answers": flood.statuses,
            "upload_p99_ratio": flooded["upload_p99_ms"] / idle["upload_p99_ms"],
            "download_p99_ratio": flooded["download_p99_ms"] / idle["download_p99_ms"],
            "rss_max_MiB": rss[0] / 2 ** 20}


def report(r: dict) -> str:
    def verdict(ok):
        return "meets" if ok else "BELOW"
    answers = ", ".join(f"{k}: {v}" for k, v in sorted(r["flood_answers"].items()))
    return "\n".join([
        f"sign-in flood of {r['flood_rate']:.0f}/s wrong secrets, new client ids, 254 addresses "
        f"(answers {answers}):",
        f"  4 KiB upload p99 {r['flood']['upload_p99_ms']:.1f} ms vs {r['idle']['upload_p99_ms']:.1f}"
        f" ms idle = {r['upload_p99_ratio']:.2f}× — {verdict(r['upload_p99_ratio'] <= GOAL_P99_RATIO)}"
        f" goal ≤ {GOAL_P99_RATIO}",
        f"  64 KiB download p99 {r['flood']['download_p99_ms']:.1f} ms vs "
        f"{r['idle']['download_p99_ms']:.1f} ms idle = {r['download_p99_ratio']:.2f}× — "
        f"{verdict(r['download_p99_ratio'] <= GOAL_P99_RATIO)} goal ≤ {GOAL_P99_RATIO}",
        f"  daemon RSS during the flood {r['rss_max_MiB']:.0f} MiB — "
        f"{verdict(r['rss_max_MiB'] < GOAL_RSS_MIB)} goal < {GOAL_RSS_MIB}",
    ])


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(prog="bench.hostile")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seconds", type=float)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--work", default=os.path.join(os.getcwd(), "bench", "work"))
    args = p.parse_args()
    print(report(run(args.work, quick=args.quick, seconds=args.seconds, rate=args.rate)))
