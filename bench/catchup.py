"""Catch-up of a node that was down, against rsync of the same files over the same link: 3
``artstored`` nodes (replication_factor 2), each in its own network namespace
(``tests/clusterlab.py``'s Cluster).

    python -m bench.catchup [--quick] [--files N] [--size BYTES] [--repeats R] [--json PATH]

The cluster settles first (every node's anti-entropy pass asked for by the admissions
done). Each repeat (full 3, quick 1; catch-up and rsync interleaved):

- node 2 is SIGKILLed and node 0 waits until it no longer sees it alive; ``--files``
  files of ``--size`` random bytes (full 400 x 256 KiB, ~100 MB; quick 60 x 64 KiB) are
  uploaded to node 0 by 4 keep-alive clients at ``ack=quorum`` (the copy goes to node 1,
  owner or hand-off). The files node 2 owns (``placement.owners`` with the roster's
  weights) and their bytes B are noted. Node 2 stays down at least 3 s after the last
  upload (``PUSH_GRACE_SECONDS``: a follower waits that long on a fresh record).
- catch-up: ``sync``, page cache dropped (``echo 3 > /proc/sys/vm/drop_caches``), node 2
  restarted. Timed from the restart, and from when it is ready (the node is up and
  serving again: the goal's measure; a node coming back has to start whether it then
  catches up by itself or is copied to by rsync, and its start, ~1 s here, is a fixed
  cost that an outage of real size makes small), until node 2 holds every file it owns.
  Both ends are the daemon's own clock readings: the start is its logged "ready" line,
  the end the commit time of its last copy (its WAL record's, read back from the public
  change feed ``GET /api/v1/changes``). Completion is detected by polling its catalog's
  file count (``GET /api/v1/element``) every 50 ms; once it has grown by the number
  owned, its catalog is listed (``GET /api/v1/files``, which never proxies) and each file
  confirmed (``GET /api/v1/files/{id}`` 200 without ``X-ArtStore-Served-By``). Rate B /
  time. The daemon's copies are durable when counted (fsynced and committed).
- rsync: the same files' data (hard links to node 0's object files, found through their
  ``attr.json`` sidecars) served by ``rsync --daemon`` inside node 0's namespace, pulled
  by ``rsync -a --fsync`` inside node 2's namespace into an empty directory on the same
  disk: the same veth link and bridge. ``sync`` and page cache dropped first, as for the
  catch-up; timed from the client's start to its exit (every file fsynced). Rate B / time.

Also reported: where the catch-up went (node 2's ``pulled`` counter -- change-feed
followers and anti-entropy pulls both count there --, nodes 0/1's ``pushed``, node 2's
first anti-entropy pass, which starts 5 s after its start), and when the first file and
half of them had arrived. Goal (issue 15): catch-up from ready >= 0.8x rsync's rate
(medians of the repeats); the rate counting the start is printed beside it. Exit status 1 if missed. ``--quick`` takes ~20 s (full ~60 s). Needs root,
``ip``, ``nft`` and ``rsync``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from artstored.cluster.repair import ROSTER_SETTLE_SECONDS
from artstored.cluster.follower import PUSH_GRACE_SECONDS
from artstored.engine import attrs as A
from artstored.engine import layout as L
from artstored.replication import placement as P

from .replication import Client
from clusterlab import Cluster  # noqa: E402  (bench.replication put tests/ on the path)
from harness import multipart, wait_until  # noqa: E402
from netns import NetLab  # noqa: E402

RF, GOAL = 2, 0.8
SWEEP, TIMEOUT = 0.05, 600.0
CLIENTS, RSYNC_PORT = 4, 8873


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def upload(c: Cluster, files: int, size: int) -> list[str]:
    """``files`` uploads of ``size`` random bytes to node 0 at ack=quorum; their ids."""
    ids, errors, lock = [], [], threading.Lock()

    def client(n: int) -> None:
        cl = Client(c, 0)
        for _ in range(n):
            status, _, answer = cl.upload(multipart(None, content=os.urandom(size),
                                                    filename="bench.bin"), "quorum")
            with lock:
                (ids.append(json.loads(answer)["file_id"]) if status == 201
                 else errors.append((status, answer[:200])))

    per = [files // CLIENTS + (t < files % CLIENTS) for t in range(CLIENTS)]
    threads = [threading.Thread(target=client, args=(n,)) for n in per]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} uploads failed, first: {errors[0]}")
    return ids


def object_files(data_dir: str) -> dict[str, str]:
    """file id → path of its data file, from the ``attr.json`` sidecars under data_dir."""
    out = {}
    for dirpath, _, names in os.walk(os.path.join(data_dir, "disks")):
        for name in names:
            if L.is_attr_file(name) and f"{os.sep}{L.OBJECTS}{os.sep}" in dirpath + os.sep:
                path = os.path.join(dirpath, name)
                with open(path, "rb") as f:
                    attr = A.decode(f.read(), source=path)
                out[attr["file_id"]] = path[:-len(L.ATTR_SUFFIX)]
    return out


def held(cl: Client) -> set[str]:
    """The files in node 2's own catalog (its listing never proxies)."""
    ids, cursor = set(), None
    while True:
        status, _, body = cl.request("GET", "/api/v1/files?limit=1000&order=asc"
                                     + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200, body[:200]
        page = json.loads(body)
        ids.update(a["file_id"] for a in page["items"])
        if not (cursor := page["next_cursor"]):
            return ids


def _local(cl: Client, file_id: str) -> bool:
    status, headers, _ = cl.request("GET", f"/api/v1/files/{file_id}")
    return status == 200 and "x-artstore-served-by" not in headers


def count(cl: Client) -> int:
    """The files in node 2's catalog (``GET /api/v1/element``: a few hundred bytes)."""
    status, _, body = cl.request("GET", "/api/v1/element")
    assert status == 200, body[:200]
    return json.loads(body)["files"]


def committed_at(cl: Client, file_ids: set[str]) -> dict[str, float]:
    """file id → when node 2 committed its copy (its WAL record's time, from the public
    change feed ``GET /api/v1/changes``; microseconds, this machine's clock)."""
    out, after = {}, 0
    while True:
        status, _, body = cl.request("GET", f"/api/v1/changes?after={after}&limit=1000")
        assert status == 200, body[:200]
        page = json.loads(body)
        for item in page["items"]:
            if item["kind"] == "file.create" and item["file_id"] in file_ids:
                out[item["file_id"]] = item["time_us"] / 1e6
        # A page of records that are no file events is empty but moves next_after on.
        if page["next_after"] == after:
            return out
        after = page["next_after"]


def ready_at(log_path: str, offset: int) -> float:
    """When the daemon logging to ``log_path`` said it was ready, in what it wrote there
    after ``offset`` (the log's size before this start; the file is appended to across
    restarts): its JSON log line's time, to the millisecond. The start of a catch-up,
    which begins once it serves."""
    when = None
    with open(log_path, encoding="utf-8", errors="replace") as f:
        f.seek(offset)
        for line in f:
            if '"ready"' in line:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("msg") == "ready":
                    when = entry["ts"]
    assert when, f"no 'ready' line in {log_path} after byte {offset}"
    return datetime.datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()


def catch_up(c: Cluster, owned: set[str], baseline: int) -> dict:
    """Restart node 2 (which held ``baseline`` files when killed); seconds until it holds
    every file of ``owned``. The start and end are the daemon's own: its logged "ready"
    and the commit time of the last copy (its change feed), not when polling saw them
    (polls 50 ms apart would add up to 50 ms at each end of a run under a second). A
    record's time is taken inside its commit's transaction: the end is early by one LMDB
    commit (a few ms)."""
    pushed = lambda: [c.status(i)["replication"]["pushed"] for i in (0, 1)]  # noqa: E731
    before = pushed()
    drop_caches()
    log_offset = os.path.getsize(c.nodes[2].log_path)
    t0, wall0 = time.monotonic(), time.time()
    c.nodes[2].start()                               # waits for /health/ready
    cl, sweeps = Client(c, 2), []
    while True:
        s = time.monotonic()
        n = count(cl) - baseline
        now = time.monotonic()
        sweeps.append(now - s)
        if n >= len(owned) and len(held(cl) & owned) == len(owned):
            bad = [f for f in sorted(owned) if not _local(cl, f)]
            if not bad:
                break
            raise RuntimeError(f"listed on node 2 but not served from it: {bad[:3]}")
        if now - t0 > TIMEOUT:
            raise RuntimeError(f"node 2 holds {n} of {len(owned)} after {TIMEOUT} s")
        time.sleep(max(0.0, SWEEP - (time.monotonic() - s)))
    times = sorted(committed_at(cl, owned).values())
    if len(times) != len(owned):
        raise RuntimeError(f"node 2's feed shows {len(times)} of {len(owned)} copies")
    ready = ready_at(c.nodes[2].log_path, log_offset) - wall0
    done = times[-1] - wall0
    if not 0 < ready <= times[0] - wall0:
        raise RuntimeError(f"node 2 ready {ready:.3f} s after its restart, its first copy "
                           f"at {times[0] - wall0:.3f} s: the clocks disagree")
    c.wait_all_alive()
    wait_until(lambda: c.status(2)["replication"]["anti_entropy"]["last_full_pass"], 60,
               "node 2's first anti-entropy pass", interval=0.2)
    rep = c.status(2)["replication"]
    ae = rep["anti_entropy"]["last_full_pass"]
    first = times[0] - wall0
    half = times[(len(times) - 1) // 2] - wall0
    return {"seconds": done, "ready_s": ready, "from_ready_s": done - ready,
            "first_s": first, "half_s": half, "sweeps": len(sweeps),
            "sweep_ms_max": max(sweeps) * 1e3,
            "node2": {k: rep[k] for k in ("pulled", "pull_failures", "records_passed_by")},
            "pushed_by_peers": [a - b for a, b in zip(pushed(), before)],
            "anti_entropy": {"started_s": ae["started_at"] - wall0,
                             "seconds": ae.get("seconds"),
                             "missing_copies": ae.get("missing_copies"),
                             "pushed": ae.get("pushed")}}


def rsync(lab: NetLab, src: str, dest: str, tag: str, expect: int) -> dict:
    """Pull module path ``tag`` from node 0's rsync daemon into ``dest`` on node 2."""
    os.makedirs(dest)
    drop_caches()
    t0 = time.monotonic()
    p = lab.spawn(2, ["rsync", "-a", "--fsync",
                      f"rsync://{lab.addr(0)}:{RSYNC_PORT}/m/{tag}/", dest + "/"],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate()
    seconds = time.monotonic() - t0
    if p.returncode != 0:
        raise RuntimeError(f"rsync exited {p.returncode}: {err.decode()[-500:]}")
    got = sum(e.stat().st_size for e in os.scandir(dest))
    if got != expect:
        raise RuntimeError(f"rsync copied {got} bytes, expected {expect}")
    return {"seconds": seconds}


def rsync_daemon(lab: NetLab, root: str) -> str:
    """Start ``rsync --daemon`` in node 0's namespace serving ``root/src`` as module m."""
    src, conf = os.path.join(root, "src"), os.path.join(root, "rsyncd.conf")
    os.makedirs(src)
    with open(conf, "w") as f:
        f.write(f"use chroot = no\npid file = {root}/rsyncd.pid\n"
                f"log file = {root}/rsyncd.log\n[m]\n  path = {src}\n  read only = yes\n"
                "  uid = root\n  gid = root\n")
    lab.spawn(0, ["rsync", "--daemon", "--no-detach", "--config", conf, "--port",
                  str(RSYNC_PORT), "--address", lab.addr(0)])
    wait_until(lambda: _listening(lab), 10, "the rsync daemon", interval=0.05)
    return src


def _listening(lab: NetLab) -> bool:
    try:
        lab.connect(2, lab.addr(0), RSYNC_PORT, timeout=1).close()
        return True
    except OSError:
        return False


def measure(args) -> dict:
    """Everything, on one fresh cluster (always torn down; its data kept on a failure)."""
    root = tempfile.mkdtemp(prefix="bench-catchup-")
    started = time.monotonic()
    try:
        with NetLab(3) as lab:
            c = Cluster(lab, root, 3, {"cluster": {"replication_factor": RF}}).start()
            # The anti-entropy passes the admissions asked for run first (one per node),
            # so none of node 0's or 1's falls into a catch-up.
            time.sleep(ROSTER_SETTLE_SECONDS + 0.5)
            wait_until(lambda: all(not a["running"] and a["last_full_pass"] for a in (
                c.status(i)["replication"]["anti_entropy"] for i in range(3))), 60,
                "every node's first anti-entropy pass", interval=0.2)
            src = rsync_daemon(lab, root)
            res = {"build_seconds": time.monotonic() - started, "repeats": []}
            weights = {m["node_id"]: m.get("weight", 1.0) for m in c.status(0)["members"]}
            for r in range(args.repeats):
                baseline = count(Client(c, 2))
                c.nodes[2].kill()
                wait_until(lambda: c.states(0)[c.ids[2]] != "alive", 60,
                           "node 0 seeing node 2 down", interval=0.1)
                t = time.monotonic()
                ids = upload(c, args.files, args.size)
                uploaded = time.monotonic()
                up = uploaded - t
                owned = {f for f in ids if c.ids[2] in P.owners(f, weights, RF)}
                paths = object_files(c.nodes[0].data_dir)
                os.makedirs(os.path.join(src, f"r{r}"))
                for f in owned:
                    os.link(paths[f], os.path.join(src, f"r{r}", f))
                nbytes = sum(os.stat(paths[f]).st_size for f in owned)
                # Down for longer than the grace a fresh record gets for its push to land.
                time.sleep(max(0.0, PUSH_GRACE_SECONDS - (time.monotonic() - uploaded)))
                run = {"files": len(owned), "bytes": nbytes, "uploaded": len(ids),
                       "upload_s": up, "catch_up": catch_up(c, owned, baseline)}
                run["rsync"] = rsync(lab, src, os.path.join(root, f"dest{r}"), f"r{r}", nbytes)
                for k in ("catch_up", "rsync"):
                    run[k]["MBps"] = nbytes / run[k]["seconds"] / 1e6
                run["catch_up"]["ready_MBps"] = nbytes / run["catch_up"]["from_ready_s"] / 1e6
                run["ratio"] = run["catch_up"]["ready_MBps"] / run["rsync"]["MBps"]
                run["ratio_with_start"] = run["catch_up"]["MBps"] / run["rsync"]["MBps"]
                res["repeats"].append(run)
                print(f"  repeat {r + 1}: catch-up {run['catch_up']['seconds']:.2f} s, "
                      f"rsync {run['rsync']['seconds']:.2f} s", flush=True)
    except BaseException:
        print(f"daemons' data and logs kept in {root}", file=sys.stderr)
        raise
    shutil.rmtree(root)
    for k in ("catch_up", "rsync"):
        res[k + "_MBps"] = statistics.median(r[k]["MBps"] for r in res["repeats"])
    res["catch_up_ready_MBps"] = statistics.median(r["catch_up"]["ready_MBps"]
                                                   for r in res["repeats"])
    res["ratio"] = res["catch_up_ready_MBps"] / res["rsync_MBps"]
    res["ratio_with_start"] = res["catch_up_MBps"] / res["rsync_MBps"]
    res["wall_seconds"] = time.monotonic() - started
    return res


def report(res: dict) -> list[str]:
    lines = [f"{'repeat':>6} {'files':>5} {'MB':>6} | {'catch-up s':>10} {'MB/s':>6} | "
             f"{'rsync s':>7} {'MB/s':>6} | {'ratio':>5} | catch-up detail (s from restart)"]
    for i, r in enumerate(res["repeats"], 1):
        cu, rs, ae = r["catch_up"], r["rsync"], r["catch_up"]["anti_entropy"]
        lines.append(
            f"{i:>6} {r['files']:>5} {r['bytes'] / 1e6:>6.1f} | {cu['seconds']:>10.2f} "
            f"{cu['MBps']:>6.1f} | {rs['seconds']:>7.2f} {rs['MBps']:>6.1f} | "
            f"{r['ratio']:>5.2f} | ready {cu['ready_s']:.2f}, first file "
            f"{cu['first_s']:.2f}, half {cu['half_s']:.2f}, all {cu['seconds']:.2f} "
            f"({cu['from_ready_s']:.2f} after ready)")
        lines.append(
            f"{'':>6} node 2 pulled {cu['node2']['pulled']} (failures "
            f"{cu['node2']['pull_failures']}, passed by {cu['node2']['records_passed_by']}); "
            f"pushed to it by n0/n1 {cu['pushed_by_peers']}; its first anti-entropy pass at "
            f"{ae['started_s']:.1f} s: {ae['missing_copies']} missing, {ae['seconds']} s; "
            f"{cu['sweeps']} polls, slowest {cu['sweep_ms_max']:.0f} ms; "
            f"upload of {r['uploaded']} files at ack=quorum {r['upload_s']:.1f} s")
    lines.append(f"median catch-up {res['catch_up_ready_MBps']:.1f} MB/s once ready "
                 f"({res['catch_up_MBps']:.1f} MB/s counting the daemon's start, "
                 f"{res['ratio_with_start']:.2f}x rsync), rsync "
                 f"{res['rsync_MBps']:.1f} MB/s (page cache dropped before each; rsync "
                 f"--fsync); cluster built and settled in {res['build_seconds']:.1f} s; wall "
                 f"{res['wall_seconds']:.0f} s")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="60 x 64 KiB, 1 repeat")
    parser.add_argument("--files", type=int, default=None, help="per repeat (400; quick 60)")
    parser.add_argument("--size", type=int, default=None,
                        help="bytes per file (256 KiB; quick 64 KiB)")
    parser.add_argument("--repeats", type=int, default=None, help="(3; quick 1)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or not all(shutil.which(p) for p in ("ip", "nft", "rsync")):
        print("bench.catchup needs root, ip, nft and rsync", file=sys.stderr)
        return 2
    args.files = args.files or (60 if args.quick else 400)
    args.size = args.size or ((64 if args.quick else 256) << 10)
    args.repeats = args.repeats or (1 if args.quick else 3)
    print(f"Catch-up of a node that was down vs rsync over the same link: 3 real daemons in "
          f"network namespaces, replication_factor {RF}; {args.files} files x "
          f"{args.size >> 10} KiB per repeat to node 0 while node 2 is down; "
          f"{args.repeats} repeats", flush=True)
    res = measure(args)
    for line in report(res):
        print(line)
    ok = res["ratio"] >= GOAL
    print(f"goal: catch-up (from ready) >= {GOAL}x rsync over the same link: "
          f"{'meets' if ok else 'BELOW goal'} ({res['ratio']:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"quick": args.quick, "args": vars(args), **res}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
