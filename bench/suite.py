"""Side by side: ArtStore against a real peer object store and the machine's HTTP ceiling.

Each server runs alone on its own fresh ext4 image (same disk, same state), driven by the
same load generator in its own process: PUT then GET of 4 KiB, 64 KiB, 1 MiB and 1 GiB
objects at concurrency 1 and 16. References: the Swift object server (fsyncs each object,
as ArtStore does), nginx WebDAV (no fsync: a ceiling, and the measure of the load
generator's own limit) and the bare aiohttp sink (fsync + rename + fsync(dir) per body:
the HTTP ceiling for durable PUTs). ArtStore also gets metadata GET, a list page, a search
and reads through the FUSE view. GETs follow their PUTs: the page cache is warm for every
server alike.

Repeats are interleaved: repeat r runs every server in turn (the order rotated each
repeat), each on a new filesystem, so drift of the machine over the run falls on all of
them alike. A figure is the median of the repeats; the spread (min-max of ops/s, as a
percentage of the median) is printed beside it. Every goal of issue 16 is printed with a
verdict. A reference server that is missing or fails, or a request that fails, makes the
run fail (``failed()``): a ratio against nothing is not a result.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time

from . import peers
from .common import Server, free_port, fresh_filesystem

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
# size -> (requests at concurrency 1, at 16)
FULL = {4 * KIB: (400, 2000), 64 * KIB: (300, 1500), MIB: (100, 600), GIB: (1, 16)}
QUICK = {4 * KIB: (20, 64), 64 * KIB: (20, 64), MIB: (10, 32), 8 * MIB: (2, 16)}
CONCURRENCY = (1, 16)
SERVERS = ("artstore", "swift", "nginx", "sink")
# Quick (make test) only checks the suite still runs: one repeat.
REPEATS, QUICK_REPEATS = 3, 1
# Issue 16's goals. PUT: >= 1.5x Swift at every size and concurrency, >= 0.8x the sink at
# 16 clients, single-client p50 <= Swift's; GET of 4 KiB and 1 MiB at 16 >= 2x Swift; a
# list page at 16 clients >= 3x the 133 pages/s measured before, p99 <= 50 ms; many 1 MiB
# files read through FUSE by 16 readers >= 0.5x direct.
PUT_VS_SWIFT, PUT_VS_SINK_X16, GET_VS_SWIFT_X16 = 1.5, 0.8, 2.0
LIST_PAGES_PER_S, LIST_P99_MS, FUSE_MANY_VS_DIRECT = 3 * 133, 50.0, 0.5
NEAR_CEILING = 0.8   # a rate this close to the load generator's best says little


def label(size: int) -> str:
    return f"{size // GIB} GiB" if size >= GIB else f"{size // MIB} MiB" if size >= MIB \
        else f"{size // KIB} KiB"


def loadgen(spec: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.loadgen"], input=json.dumps(spec),
                         capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout)


class RssSampler:
    """The largest resident set of a process while it runs (total and anonymous)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.max_rss = self.max_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.2):
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            self.max_rss = max(self.max_rss, int(line.split()[1]) * 1024)
                        elif line.startswith("RssAnon:"):
                            self.max_anon = max(self.max_anon, int(line.split()[1]) * 1024)
            except FileNotFoundError:
                return

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {"max_rss_MiB": self.max_rss / MIB, "max_rss_anon_MiB": self.max_anon / MIB}


def _row(results: list, server: str, workload: str, size, conc: int, res: dict) -> None:
    """Record one measurement; failed requests are counted in it, not raised, so one
    reference server's trouble does not lose the rest of the run."""
    results.append({"errors": res["errors"], "first_error": res["first_error"],
                    "server": server, "workload": workload,
                    "size": label(size) if isinstance(size, int) else size,
                    "concurrency": conc, "ops_per_s": res["ops_per_s"],
                    "MB_per_s": res["bytes_per_s"] / 1e6, "p50_ms": res["p50_ms"],
                    "p99_ms": res["p99_ms"], "ops": res["ops"]})


def _objects(server: str, target, base: str, sizes: dict, results: list) -> dict:
    """PUT then GET every size at both concurrencies; returns what later workloads need."""
    kept = {}
    for size, counts in sizes.items():
        for conc, count in zip(CONCURRENCY, counts):
            prefix = f"o{size}-{conc}-{secrets.token_hex(3)}"
            spec = {"base": base, "concurrency": conc, "requests": count, "body_size": size}
            if server == "artstore":
                boundary = "b-" + secrets.token_hex(8)
                spec.update(method="POST", path="/api/v1/files", collect="file_id",
                            body_prefix=f"--{boundary}\r\nContent-Disposition: form-data; "
                                        f"name=\"file\"; filename=\"o.bin\"\r\n\r\n",
                            body_suffix=f"\r\n--{boundary}--\r\n",
                            headers={"Authorization": f"Bearer {target.token}",
                                     "Content-Type":
                                         f"multipart/form-data; boundary={boundary}"})
            elif server == "sink":
                spec.update(method="POST", path="/upload")
            else:
                spec.update(method="PUT", path_template=target.put_path(prefix),
                            headers=target.put_headers(), collect="paths")
            put = loadgen(spec)
            _row(results, server, "PUT", size, conc, put)
            if server == "sink":
                continue
            if server == "artstore":
                paths = [f"/api/v1/files/{i}/download" for i in put["collected"]]
                headers = {"Authorization": f"Bearer {target.token}"}
                kept.setdefault("ids", []).extend(put["collected"])
                if size == MIB:
                    kept["mib_ids"] = put["collected"]
            else:
                paths, headers = put["collected"], {}
            get = loadgen({"base": base, "method": "GET", "paths": paths, "headers": headers,
                           "concurrency": conc, "requests": count})
            _row(results, server, "GET", size, conc, get)
    return kept


def _artstore_extras(store: Server, base: str, kept: dict, results: list, quick: bool) -> None:
    auth = {"Authorization": f"Bearer {store.token}"}
    n = 300 if quick else 3000
    ids = kept["ids"]
    for workload, spec in (
            ("metadata GET", {"paths": [f"/api/v1/files/{i}" for i in ids]}),
            ("list page (100)", {"path": "/api/v1/files?limit=100"}),
            ("search", {"path": "/api/v1/search?q=bin&limit=20"})):
        res = loadgen({"base": base, "method": "GET", "headers": auth, "concurrency": 16,
                       "requests": n, **spec})
        _row(results, "artstore", workload, "-", 16, res)


def _fuse_reads(store: Server, ids: list[str], results: list) -> None:
    """Read the 1 MiB objects through the FUSE view with 16 threads, and directly."""
    from .fuse import _mount, _unmount

    mountpoint = store.data_dir + "-mnt"
    proc = _mount(store.data_dir, mountpoint)
    try:
        via = [os.path.join(mountpoint, "by-id", f"{i}.bin") for i in ids]
        direct = [_direct_path(store, i) for i in ids]
        for server, paths in (("artstore-fuse", via), ("direct", direct)):
            _read_all(paths)  # warm
            t = time.perf_counter()
            total = _read_all(paths)
            elapsed = time.perf_counter() - t
            results.append({"server": server, "workload": "read files (x16 threads)",
                            "size": "1 MiB", "concurrency": 16,
                            "ops_per_s": len(paths) / elapsed, "MB_per_s": total / elapsed / 1e6,
                            "p50_ms": None, "p99_ms": None, "ops": len(paths)})
    finally:
        _unmount(proc)
        os.rmdir(mountpoint)


def _direct_path(store: Server, file_id: str) -> str:
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{store.port}/api/v1/files/{file_id}",
                                 headers={"Authorization": f"Bearer {store.token}"})
    attr = json.loads(urllib.request.urlopen(req).read())
    return store.path_of(attr)


def _read_all(paths: list[str]) -> int:
    from concurrent.futures import ThreadPoolExecutor

    def read(path):
        n = 0
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(MIB):
                n += len(chunk)
        return n
    with ThreadPoolExecutor(16) as pool:
        return sum(pool.map(read, paths))


def run(work: str, *, quick: bool = False, repeats: int | None = None) -> dict:
    sizes = QUICK if quick else FULL
    repeats = repeats or (QUICK_REPEATS if quick else REPEATS)
    have = peers.available()
    runs: list[list[dict]] = []          # one list of measurements per repeat
    failures: dict[str, str] = {}
    for server, present in have.items():
        if not present:
            failures[server] = "not installed"
    rss = {}
    image = 4 * GIB if quick else 40 * GIB
    for r in range(repeats):
        results: list[dict] = []
        order = SERVERS[r % len(SERVERS):] + SERVERS[:r % len(SERVERS)]
        for server in order:
            if server in failures:
                continue
            sampler = None
            with fresh_filesystem(os.path.join(work, f"{server}-{r}"), image) as (fs, kind):
                port = free_port()
                base = f"http://127.0.0.1:{port}"
                try:
                    if server == "artstore":
                        target = Server.artstored(os.path.join(fs, "store"), port)
                        sampler = RssSampler(target.proc.pid)
                    elif server == "sink":
                        target = Server.sink(os.path.join(fs, "sink"), port)
                    elif server == "swift":
                        target = peers.SwiftObject.start(os.path.join(fs, "swift"), port)
                    else:
                        target = peers.NginxDav.start(os.path.join(fs, "nginx"), port)
                except Exception as exc:
                    failures[server] = f"did not start: {type(exc).__name__}: {exc}"[:500]
                    continue
                try:
                    kept = _objects(server, target, base, sizes, results)
                    if server == "artstore":
                        _artstore_extras(target, base, kept, results, quick)
                        _fuse_reads(target, kept["mib_ids"], results)
                except Exception as exc:  # keep what the other servers measure
                    failures[server] = f"{type(exc).__name__}: {exc}"[:500]
                finally:
                    if sampler is not None:
                        peak = sampler.stop()
                        rss = {k: max(v, rss.get(k, 0)) for k, v in peak.items()}
                    target.stop()
        runs.append(results)
    return {"results": _medians(runs), "repeats": repeats, "artstore_rss": rss,
            "peers": have, "failures": failures,
            "filesystem": "fresh ext4 image per server and repeat"}


def _medians(runs: list[list[dict]]) -> list[dict]:
    """One row per (server, workload, size, concurrency): the median of the repeats'
    ops/s, MB/s and latencies, the spread of ops/s, and every repeat's errors."""
    import statistics
    groups: dict[tuple, list[dict]] = {}
    for results in runs:
        for row in results:
            key = (row["server"], row["workload"], row["size"], row["concurrency"])
            groups.setdefault(key, []).append(row)
    out = []
    for rows in groups.values():
        med = dict(rows[0])
        for field in ("ops_per_s", "MB_per_s", "p50_ms", "p99_ms"):
            values = [r[field] for r in rows if r.get(field) is not None]
            med[field] = statistics.median(values) if values else None
        ops = [r["ops_per_s"] for r in rows]
        med["repeats"] = len(rows)
        med["spread_pct"] = 100 * (max(ops) - min(ops)) / med["ops_per_s"] \
            if med["ops_per_s"] else None
        med["errors"] = sum(r.get("errors") or 0 for r in rows)
        med["first_error"] = next((r.get("first_error") for r in rows
                                   if r.get("first_error")), None)
        out.append(med)
    return out


def failed(suite: dict) -> list[str]:
    """Why this run's ratios cannot be trusted (empty: they can)."""
    why = [f"{server}: {failure}" for server, failure in suite.get("failures", {}).items()]
    why += [f"{r['server']} {r['workload']} {r['size']} x{r['concurrency']}: {r['errors']} "
            f"requests failed ({r['first_error']})" for r in suite["results"]
            if r.get("errors")]
    return why


def ratios(results: list[dict]) -> list[dict]:
    """ArtStore ÷ each reference, per workload (ops/s), with the goals that apply to the
    row (``goals``: [(what, met)]) and whether the rate is near the load generator's
    ceiling (nginx, the fastest server, on the same workload)."""
    index = {(r["server"], r["workload"], r["size"], r["concurrency"]): r for r in results}
    small_get_ceiling = index.get(("nginx", "GET", "4 KiB", 16))
    out = []
    for r in results:
        if r["server"] != "artstore":
            continue
        row = {"workload": r["workload"], "size": r["size"], "concurrency": r["concurrency"],
               "artstore": r, "goals": []}
        for ref in ("swift", "nginx", "sink"):
            other = index.get((ref, r["workload"], r["size"], r["concurrency"]))
            if other and other["ops_per_s"]:
                row[ref] = other
                row[f"vs_{ref}"] = r["ops_per_s"] / other["ops_per_s"]
        ceiling = row.get("nginx") or (small_get_ceiling if r["workload"] in (
            "metadata GET", "list page (100)", "search") else None)
        if ceiling and ceiling["ops_per_s"]:
            row["ceiling"] = ceiling["ops_per_s"]
            row["near_ceiling"] = r["ops_per_s"] >= NEAR_CEILING * ceiling["ops_per_s"]
        _goals(row)
        out.append(row)
    fuse = index.get(("artstore-fuse", "read files (x16 threads)", "1 MiB", 16))
    direct = index.get(("direct", "read files (x16 threads)", "1 MiB", 16))
    if fuse and direct:
        ratio = fuse["MB_per_s"] / direct["MB_per_s"]
        out.append({"workload": "FUSE read ÷ direct", "size": "1 MiB", "concurrency": 16,
                    "artstore": fuse, "direct": direct, "vs_direct": ratio,
                    "goals": [(f"÷direct >= {FUSE_MANY_VS_DIRECT}",
                               ratio >= FUSE_MANY_VS_DIRECT)]})
    return out


def _goals(row: dict) -> None:
    """Issue 16's goals for one ArtStore row, each (what, met); a goal whose reference is
    missing counts as not met."""
    a, goals = row["artstore"], row["goals"]
    work, size, conc = row["workload"], row["size"], row["concurrency"]
    if work == "PUT":
        goals.append((f"÷swift >= {PUT_VS_SWIFT}", row.get("vs_swift", 0) >= PUT_VS_SWIFT))
        if conc == 16:
            goals.append((f"÷sink >= {PUT_VS_SINK_X16}",
                          row.get("vs_sink", 0) >= PUT_VS_SINK_X16))
        else:
            swift = row.get("swift")
            goals.append(("p50 <= swift's", bool(swift) and a["p50_ms"] is not None and
                          a["p50_ms"] <= swift["p50_ms"]))
    elif work == "GET" and conc == 16 and size in ("4 KiB", "1 MiB"):
        goals.append((f"÷swift >= {GET_VS_SWIFT_X16}",
                      row.get("vs_swift", 0) >= GET_VS_SWIFT_X16))
    elif work == "list page (100)":
        goals.append((f">= {LIST_PAGES_PER_S} pages/s", a["ops_per_s"] >= LIST_PAGES_PER_S))
        goals.append((f"p99 <= {LIST_P99_MS:.0f} ms", a["p99_ms"] is not None and
                      a["p99_ms"] <= LIST_P99_MS))


def _ops(value: float, width: int) -> str:
    return f"{value:>{width}.2f}" if value < 10 else f"{value:>{width}.0f}"


def _ms(value: float | None) -> str:
    if value is None:
        return f"{'-':>8}"
    return f"{value / 1000:>7.1f}s" if value >= 10_000 else f"{value:>8.1f}"


def _verdicts(goals: list) -> str:
    return "; ".join(f"{what} {'meets' if met else 'BELOW'}" for what, met in goals)


def table(suite: dict) -> str:
    lines = [f"medians of {suite.get('repeats', 1)} interleaved repeats (spread: min-max of "
             f"ArtStore's ops/s over the repeats, % of the median); GETs read what was just "
             f"PUT: the page cache is warm for every server",
             f"{'workload':<28}{'artstore':>11}{'spread':>7}{'MB/s':>7}{'p50ms':>8}{'p99ms':>8}"
             f"{'swift':>9}{'nginx':>9}{'sink':>9}{'÷swift':>7}{'÷nginx':>7}{'÷sink':>7}  goals"]
    rows = ratios(suite["results"])
    for row in rows:
        a = row["artstore"]
        name = f"{row['workload']} {row['size']} x{row['concurrency']}"
        spread = f"{a['spread_pct']:>6.0f}%" if a.get("spread_pct") is not None \
            else f"{'-':>7}"

        def ops(ref):
            return _ops(row[ref]["ops_per_s"], 9) if ref in row else f"{'-':>9}"

        def ratio(ref, width=7):
            return f"{row['vs_' + ref]:>{width}.2f}" if f"vs_{ref}" in row else f"{'-':>{width}}"
        p50, p99 = _ms(a["p50_ms"]), _ms(a["p99_ms"])
        note = " (near the load generator's ceiling)" if row.get("near_ceiling") else ""
        if row["workload"] == "FUSE read ÷ direct":
            lines.append(f"{name:<28}{_ops(a['ops_per_s'], 11)}{spread}{a['MB_per_s']:>7.0f}"
                         f"{p50}{p99}   direct {row['direct']['MB_per_s']:.0f} MB/s, ratio "
                         f"{row['vs_direct']:.2f}  {_verdicts(row['goals'])}")
            continue
        lines.append(f"{name:<28}{_ops(a['ops_per_s'], 11)}{spread}{a['MB_per_s']:>7.0f}"
                     f"{p50}{p99}{ops('swift')}{ops('nginx')}{ops('sink')}{ratio('swift')}"
                     f"{ratio('nginx')}{ratio('sink')}  {_verdicts(row['goals'])}{note}")
    goals = [met for row in rows for _, met in row["goals"]]
    lines.append(f"goals met: {sum(goals)} of {len(goals)}")
    index = {(r["server"], r["workload"], r["size"], r["concurrency"]): r
             for r in suite["results"]}
    ceiling = [f"{w} {sz} x{c} {index[('nginx', w, sz, c)]['ops_per_s']:.0f}/s"
               for w, sz, c in (("GET", "4 KiB", 16), ("PUT", "4 KiB", 16))
               if ("nginx", w, sz, c) in index]
    if ceiling:
        lines.append("load generator ceiling (its rate against nginx, the fastest server): "
                     + ", ".join(ceiling) + f"; an ArtStore rate above {NEAR_CEILING:.0%} of "
                     "the ceiling on its workload is marked")
    rss = suite.get("artstore_rss") or {}
    if rss:
        lines.append(f"ArtStore daemon RSS, largest during the suite: {rss['max_rss_MiB']:.0f} MiB "
                     f"(anonymous {rss['max_rss_anon_MiB']:.0f} MiB; goal < 200)")
    for why in failed(suite):
        lines.append(f"FAILED: {why}")
    return "\n".join(lines)


def chart(suite: dict, path: str) -> str | None:
    """A PNG of the ratios, for people who would rather look; None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in ratios(suite["results"]) if "vs_swift" in r or "vs_nginx" in r]
    names = [f"{r['workload']} {r['size']} x{r['concurrency']}" for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(rows) + 1.5))
    y = range(len(rows))
    ax.barh([i - 0.2 for i in y], [r.get("vs_swift", 0) for r in rows], 0.4,
            label="ArtStore ÷ Swift object server")
    ax.barh([i + 0.2 for i in y], [r.get("vs_nginx", 0) for r in rows], 0.4,
            label="ArtStore ÷ nginx WebDAV (no fsync)")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(y), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio of operations per second (higher is better for ArtStore)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
