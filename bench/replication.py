"""Replication measured with real daemons: 3 ``artstored`` nodes (replication_factor 2), each
in its own network namespace (``tests/clusterlab.py``'s Cluster), every upload sent to node 0.

    python -m bench.replication [--quick] [--nodes 3] [--files N] [--size BYTES]
                                [--clients C] [--json PATH]

- throughput: C client threads (keep-alive connections made in node 0's namespace) upload
  ``--files`` files of ``--size`` bytes (64 KiB; the full run also 1 MiB, a quarter as many)
  at ``ack=local`` then ``ack=quorum``, interleaved (quick 2 repeats of each, full 3):
  files/s and MB/s (median of the repeats), latency p50/p99 (repeats pooled). Node 0's
  pushes are left to finish before the next repeat (its ``pushed`` counter reaches one per
  other owner of each file), so no repeat pays for the last one's background work;
  ``drain`` is that wait, from the repeat's last answer.
- lag: one client uploads at ``ack=local`` at 20 files/s for 20 s (quick 5 s); from each
  201, one thread per node sweeps its pending files every 20 ms until ``GET /api/v1/files/
  {id}`` answers 200 without ``X-ArtStore-Served-By`` (held there, not proxied). A file's
  lag is its slowest other owner's (to within a sweep and a request); a file still not on
  its owners 10 s after the load counts as infinite.
- each node's replication counters over each phase (``pulled``: copies taken from the
  change feed, whether or not a push of the same file was under way).

Goals: lag p99 <= 1 s under the steady load (ours: a copy elsewhere within a second); at
64 KiB, ack=quorum throughput >= 0.7x ack=local (issue 15's goal). Exit status 1 if one is missed. ``--quick``: 2 clients, 40 files per repeat,
64 KiB only, 5 s of steady load (well under 60 s). Needs root, ``ip`` and ``nft``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

from artstored.replication import placement as P
from artstored.replication.simulate import percentile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))

from clusterlab import PORT, Cluster  # noqa: E402  (the lab lives with the tests)
from harness import multipart, wait_until  # noqa: E402
from netns import NetLab  # noqa: E402

RF = 2
LAG_GOAL, QUORUM_GOAL = 1.0, 0.7     # seconds; quorum ÷ local files/s at 64 KiB
POLL, DRAIN = 0.02, 10.0
RATE = 20.0                          # files/s of the steady load
COUNTERS = ("pushed", "push_failures", "pulled", "pull_failures")


class Client:
    """One keep-alive HTTP connection to node i, made inside its namespace."""

    def __init__(self, c: Cluster, i: int):
        self.c, self.i, self.conn = c, i, None

    def request(self, method: str, path: str, body=None, headers=None):
        """(status, lower-cased headers, body); reconnects once if the connection broke."""
        headers = {"Authorization": f"Bearer {self.c.token}", **(headers or {})}
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = self.c.lab.http_connection(self.i, self.c.lab.addr(self.i), PORT,
                                                       timeout=120)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                r = self.conn.getresponse()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise

    def upload(self, body: tuple[bytes, str], ack: str):
        return self.request("POST", f"/api/v1/files?ack={ack}", body=body[0],
                            headers={"Content-Type": body[1]})


def bodies(size: int, count: int, tag: str) -> list[tuple[bytes, str]]:
    """``count`` distinct multipart bodies of ``size`` bytes of content each."""
    base = os.urandom(size)
    return [multipart(None, content=f"{tag}-{k:08d}".encode().ljust(32, b".")[:32]
                      + base[32:], filename="bench.bin") for k in range(count)]


def counters(c: Cluster, before: list[dict] | None = None) -> list[dict]:
    """Each node's replication counters (minus ``before``'s)."""
    now = [{k: c.status(i)["replication"][k] for k in COUNTERS} for i in range(len(c.nodes))]
    return [{k: n[k] - b[k] for k in COUNTERS} for n, b in zip(now, before)] if before else now


def other_owners(c: Cluster, file_id: str) -> list[int]:
    return [c.index_of(n) for n in P.owners(file_id, {nid: 1.0 for nid in c.ids}, RF)
            if n != c.ids[0]]


def burst(c: Cluster, ack: str, size: int, clients: int, files: int, tag: str) -> dict:
    """``files`` uploads to node 0 by ``clients`` threads; then node 0's pushes drained."""
    per = [files // clients + (t < files % clients) for t in range(clients)]
    work = [bodies(size, n, f"{tag}-{t}") for t, n in enumerate(per)]
    lat, ids, errors = [], [], []
    gate = threading.Barrier(clients + 1)
    pushed0 = c.status(0)["replication"]["pushed"]

    def client(mine):
        cl = Client(c, 0)
        cl.request("GET", "/health/ready")          # connected before the clock starts
        gate.wait()
        for body in mine:
            t = time.monotonic()
            status, _, answer = cl.upload(body, ack)
            lat.append(time.monotonic() - t)
            (ids.append(json.loads(answer)["file_id"]) if status == 201
             else errors.append((status, answer[:200])))

    threads = [threading.Thread(target=client, args=(w,)) for w in work]
    for t in threads:
        t.start()
    gate.wait()
    started = time.monotonic()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    expect = pushed0 + sum(len(other_owners(c, f)) for f in ids)
    wait_until(lambda: c.status(0)["replication"]["pushed"] >= expect, 120,
               f"node 0's pushes of the {ack} repeat", interval=0.01)
    return {"ack": ack, "files": len(ids), "errors": errors[:3], "error_count": len(errors),
            "seconds": seconds, "files_per_s": len(ids) / seconds,
            "MBps": len(ids) * size / seconds / 1e6, "lat": lat,
            "drain": time.monotonic() - started - seconds}


def throughput(c: Cluster, size: int, clients: int, files: int, repeats: int) -> dict:
    runs = {"local": [], "quorum": []}
    for r in range(repeats):
        for ack in runs:
            runs[ack].append(burst(c, ack, size, clients, files, f"{size}-{ack}-{r}"))
    out = {"size": size, "clients": clients, "files": files, "repeats": repeats}
    for ack, rs in runs.items():
        lat = [x for r in rs for x in r["lat"]]
        out[ack] = {"files_per_s": statistics.median(r["files_per_s"] for r in rs),
                    "MBps": statistics.median(r["MBps"] for r in rs),
                    "per_repeat": [round(r["files_per_s"], 1) for r in rs],
                    "p50_ms": percentile(lat, 50) * 1e3, "p99_ms": percentile(lat, 99) * 1e3,
                    "drain_max_s": max(r["drain"] for r in rs),
                    "errors": sum(r["error_count"] for r in rs),
                    "first_errors": [e for r in rs for e in r["errors"]][:3]}
    out["ratio"] = out["quorum"]["files_per_s"] / out["local"]["files_per_s"]
    out["p50_diff_ms"] = out["quorum"]["p50_ms"] - out["local"]["p50_ms"]
    return out


def lag(c: Cluster, size: int, seconds: float) -> dict:
    """Steady ``ack=local`` load at RATE files/s; per file, 201 → held by its other owners."""
    pending = {i: {} for i in range(1, len(c.nodes))}      # node → {file id: time of 201}
    worst: dict[str, float] = {}                            # file id → slowest owner so far
    left = {}                                               # file id → owners still to hold
    lock, done = threading.Lock(), threading.Event()

    def poller(i):
        cl = Client(c, i)
        give_up = None
        while True:
            sweep = time.monotonic()
            with lock:
                items = list(pending[i].items())
            if done.is_set():
                give_up = give_up or sweep + DRAIN
                if not items or sweep > give_up:
                    return
            for fid, t0 in items:
                status, headers, _ = cl.request("GET", f"/api/v1/files/{fid}")
                if status == 200 and "x-artstore-served-by" not in headers:
                    now = time.monotonic()
                    with lock:
                        del pending[i][fid]
                        worst[fid] = max(worst.get(fid, 0.0), now - t0)
                        left[fid] -= 1
            time.sleep(max(0.0, POLL - (time.monotonic() - sweep)))

    pollers = [threading.Thread(target=poller, args=(i,)) for i in pending]
    for t in pollers:
        t.start()
    work = bodies(size, int(RATE * seconds), f"lag-{size}")
    up, errors, late = Client(c, 0), [], 0.0
    start = time.monotonic() + 0.1
    try:
        for k, body in enumerate(work):
            at = start + k / RATE
            late = max(late, time.monotonic() - at)
            time.sleep(max(0.0, at - time.monotonic()))
            status, _, answer = up.upload(body, "local")
            acked = time.monotonic()
            if status != 201:
                errors.append((status, answer[:200]))
                continue
            fid = json.loads(answer)["file_id"]
            owners = other_owners(c, fid)
            with lock:
                left[fid] = len(owners)
                for i in owners:
                    pending[i][fid] = acked
        sent = time.monotonic() - start
    finally:
        done.set()
        for t in pollers:
            t.join()
    lags = [worst[f] if n == 0 else math.inf for f, n in left.items()]
    return {"files": len(left), "rate": len(left) / sent, "seconds": seconds,
            "errors": len(errors), "first_errors": errors[:3], "max_late_s": late,
            "never": sum(n > 0 for n in left.values()),
            "p50_s": percentile(lags, 50), "p99_s": percentile(lags, 99), "max_s": max(lags)}


def measure(args, sizes: list[int], repeats: int, steady_s: float) -> dict:
    """Everything, on one fresh cluster (always torn down; its data kept on a failure)."""
    root = tempfile.mkdtemp(prefix="bench-replication-")
    started = time.monotonic()
    try:
        with NetLab(args.nodes) as lab:
            c = Cluster(lab, root, args.nodes, {"cluster": {"replication_factor": RF}}).start()
            res = {"build_seconds": time.monotonic() - started, "throughput": []}
            snap = counters(c)
            for size in sizes:
                files = args.files if size == args.size else max(8, args.files // 4)
                res["throughput"].append(throughput(c, size, args.clients, files, repeats))
            res["counters"] = {"throughput": counters(c, snap)}
            snap = counters(c)
            res["lag"] = lag(c, args.size, steady_s)
            res["counters"]["lag"] = counters(c, snap)
    except BaseException:
        print(f"daemons' data and logs kept in {root}", file=sys.stderr)
        raise
    shutil.rmtree(root)
    res["wall_seconds"] = time.monotonic() - started
    return res


def report(res: dict) -> list[str]:
    lines = [f"{'size':>8} {'ack':>6} | {'files/s':>8} {'MB/s':>7} | {'p50 ms':>7} "
             f"{'p99 ms':>7} | {'drain s':>7} | {'errors':>6} | files/s per repeat"]
    for t in res["throughput"]:
        for ack in ("local", "quorum"):
            a = t[ack]
            lines.append(f"{t['size'] >> 10:>5} KiB {ack:>6} | {a['files_per_s']:>8.1f} "
                         f"{a['MBps']:>7.1f} | {a['p50_ms']:>7.1f} {a['p99_ms']:>7.1f} | "
                         f"{a['drain_max_s']:>7.2f} | {a['errors']:>6} | {a['per_repeat']}")
        lines.append(f"{t['size'] >> 10:>5} KiB quorum ÷ local: {t['ratio']:.2f} files/s; "
                     f"p50 latency +{t['p50_diff_ms']:.1f} ms ({t['clients']} clients, "
                     f"{t['files']} files x {t['repeats']} repeats each)")
    g = res["lag"]
    lines.append(f"lag at ack=local, {g['rate']:.1f} files/s for {g['seconds']:.0f} s "
                 f"({g['files']} files, {g['errors']} errors, {g['never']} never on their "
                 f"owners, sender at most {g['max_late_s'] * 1e3:.0f} ms behind): p50 "
                 f"{g['p50_s'] * 1e3:.0f} ms, p99 {g['p99_s'] * 1e3:.0f} ms, max "
                 f"{g['max_s'] * 1e3:.0f} ms")
    for phase, per_node in res["counters"].items():
        lines.append(f"replication counters over the {phase} phase: " + "; ".join(
            f"n{i} " + (" ".join(f"{k} {v}" for k, v in d.items() if v) or "nothing")
            for i, d in enumerate(per_node)))
    lines.append(f"cluster built in {res['build_seconds']:.1f} s; "
                 f"wall {res['wall_seconds']:.0f} s")
    return lines + [f"error: {e}" for t in res["throughput"] for a in ("local", "quorum")
                    for e in t[a]["first_errors"]] + [f"error: {e}" for e in g["first_errors"]]


def goals(res: dict, size: int) -> list[tuple[str, bool]]:
    g = res["lag"]
    ok = g["p99_s"] <= LAG_GOAL and g["errors"] == 0
    out = [(f"goal: replication lag p99 <= {LAG_GOAL:.0f} s at {g['rate']:.0f} files/s "
            f"ack=local: {'meets' if ok else 'BELOW goal'} (p99 {g['p99_s'] * 1e3:.0f} ms, "
            f"max {g['max_s'] * 1e3:.0f} ms)", ok)]
    t = next(t for t in res["throughput"] if t["size"] == size)
    ok = t["ratio"] >= QUORUM_GOAL and t["local"]["errors"] + t["quorum"]["errors"] == 0
    out.append((f"goal: ack=quorum throughput >= {QUORUM_GOAL}x ack=local at "
                f"{size >> 10} KiB: {'meets' if ok else 'BELOW goal'} ({t['ratio']:.2f}x: "
                f"{t['quorum']['files_per_s']:.1f} vs {t['local']['files_per_s']:.1f} "
                f"files/s)", ok))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 clients, 64 KiB, 5 s lag")
    parser.add_argument("--nodes", type=int, default=3, help="daemons (3)")
    parser.add_argument("--files", type=int, default=None, help="per repeat (240; quick 40)")
    parser.add_argument("--size", type=int, default=64 << 10, help="bytes per file (64 KiB)")
    parser.add_argument("--clients", type=int, default=None, help="threads (4; quick 2)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nft"):
        print("bench.replication needs root, ip and nft (network namespaces)", file=sys.stderr)
        return 2
    args.files = args.files or (40 if args.quick else 240)
    args.clients = args.clients or (2 if args.quick else 4)
    sizes = [args.size] + ([] if args.quick or args.size == 1 << 20 else [1 << 20])
    repeats, steady_s = (2, 5.0) if args.quick else (3, 20.0)
    print(f"Replication, {args.nodes} real daemons in network namespaces, replication_factor "
          f"{RF}, uploads to node 0; {args.clients} clients, {repeats} interleaved repeats; "
          f"lag at {RATE:.0f} files/s for {steady_s:.0f} s", flush=True)
    res = measure(args, sizes, repeats, steady_s)
    for line in report(res):
        print(line)
    verdicts = goals(res, args.size)
    for line, _ in verdicts:
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"quick": args.quick, "args": vars(args), **res}, f, indent=1)
    return 0 if all(ok for _, ok in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
