"""SWIM membership measured with real daemons: 3 and 5 ``artstored`` nodes, each in its own
network namespace on one bridge (``tests/netns.py``'s NetLab), beside what the formula and
the simulator expect.

    python -m bench.cluster [--quick] [--sizes 3,5] [--kills K] [--steady SECONDS]
                            [--seed N] [--json PATH]

For each size N: node 0 is the admin; the others are seeded to it and admitted through its
API, then the cluster is left alone until every node sees every other alive. Then:

- steady state (``--steady`` s): each node's transport counters (``GET /api/v1/cluster``)
  at the start and the end give gossip bytes/s (signed envelopes sent + received; HTTP and
  TCP not counted) and messages sent/s per node. ``wire`` is the traffic of the node's
  bridge port, both ways, everything included. False suspicions: every node's states,
  polled every 0.5 s (a suspect or dead member seen), and the nodes' own count of
  suspicions they raised (``swim.suspicions_raised``), which catches those refuted between
  two polls;
- ``--kills`` times: SIGKILL a random member (never the admin), poll the live nodes every
  0.1 s: kill → the first node showing it suspect or dead (``1st susp``), kill → every live
  node showing it dead (``dead all``); then restart it and time, from the restart (the
  daemon's own start included), until every node shows it alive (``rejoin``); full
  convergence before the next kill.

Goals: dead everywhere within ``detection_bound(SwimConfig.lan(), N)`` after every kill; no
false suspicion while steady; gossip at most 4 KiB/s per node at 5 nodes -- our budget: a
LAN cluster's membership costs next to nothing. Exit status 1 if one is missed.
``--quick``: 3 nodes, 1 kill, 10 s steady (~25 s). Needs root, ``ip`` and ``nft``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time

from artstored.replication.simulate import percentile, run_cell
from artstored.replication.swim_config import SwimConfig, detection_bound

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))

from harness import wait_until  # noqa: E402  (the lab lives with the tests)
from netns import NetLab, NsDaemon, run  # noqa: E402

PORT = 8480
GOSSIP_BUDGET = 4096        # bytes/s per node, at 5 nodes
STEADY_POLL, KILL_POLL = 0.5, 0.1
CONFIG = SwimConfig.lan()


class Cluster:
    """N daemons of one lab, the admin first, and the admin's token (the only one that
    works on a node holding the cluster document)."""

    def __init__(self, lab: NetLab, root: str, n: int):
        self.lab = lab
        admin = NsDaemon(lab, 0, os.path.join(root, "n0"), port=PORT,
                         config={"cluster": {"enabled": True, "role": "admin"}})
        admin.start()
        self.token = admin.admin_token()
        seeds = [f"{lab.addr(0)}:{PORT}"]
        self.nodes = [admin] + [NsDaemon(lab, i, os.path.join(root, f"n{i}"), port=PORT,
                                         config={"cluster": {"seeds": seeds, "role": "member"}})
                                for i in range(1, n)]
        for d in self.nodes[1:]:    # started together: startup is most of the build time
            d.start(wait=False)
        for d in self.nodes[1:]:
            d.wait_ready()
        self.ids = [self.status(admin)["node_id"]]
        for d in self.nodes[1:]:
            with open(os.path.join(d.data_dir, "node.json")) as f:
                self.ids.append(json.load(f)["node_id"])
        asked = lambda: {r["node_id"] for r in self.status(admin)["join_requests"]}  # noqa: E731
        wait_until(lambda: set(self.ids[1:]) <= asked(), 30, "every join request on the admin")
        for nid in self.ids[1:]:
            r = admin.api().request("PUT", f"/api/v1/cluster/members/{nid}")
            assert r.status == 200, r.body
        wait_until(self.converged, 60, "every node seeing every other alive")

    def status(self, d: NsDaemon) -> dict:
        """``GET /api/v1/cluster`` on ``d``, as a dict."""
        r = d.ns_api(self.token).get("/api/v1/cluster")
        assert r.status == 200, r.body
        return r.json()

    def states(self, d: NsDaemon) -> dict[str, str]:
        """node id → state, as ``d`` sees the cluster."""
        return {m["node_id"]: m["state"] for m in self.status(d)["members"]}

    def converged(self) -> bool:
        """True when every node sees every node alive."""
        everyone = dict.fromkeys(self.ids, "alive")
        return all(self.states(d) == everyone for d in self.nodes)

    def wire_bytes(self, i: int) -> int:
        """Bytes through node i's port on the bridge, both ways (the status polls go over
        the node's loopback, so this is its traffic with the other nodes only)."""
        link = json.loads(run("ip", "-n", self.lab.hub, "-s", "-j", "link", "show", f"v{i}"))
        return link[0]["stats64"]["rx"]["bytes"] + link[0]["stats64"]["tx"]["bytes"]


def steady(c: Cluster, seconds: float) -> dict:
    """Gossip per node over ``seconds`` without failures: bytes/s, wire bytes/s and
    messages/s (one value per node), suspicions seen by polling and raised by the nodes."""
    def sample():
        out = []
        for i, d in enumerate(c.nodes):
            s = c.status(d)
            out.append((time.monotonic(), s["transport"], s["swim"].get("suspicions_raised", 0),
                        c.wire_bytes(i)))
        return out

    start = sample()
    last = {(d.node, nid): "alive" for d in c.nodes for nid in c.ids}
    seen = 0
    end_at = time.monotonic() + seconds
    while time.monotonic() < end_at:
        time.sleep(STEADY_POLL)
        for d in c.nodes:
            for nid, state in c.states(d).items():
                seen += state != "alive" and last[d.node, nid] == "alive"  # a new episode
                last[d.node, nid] = state
    end = sample()
    res = {"bytes_per_s": [], "wire_bytes_per_s": [], "messages_per_s": [],
           "suspicions_seen": seen, "suspicions_raised": 0, "seconds": seconds}
    for (t0, tr0, raised0, wire0), (t1, tr1, raised1, wire1) in zip(start, end):
        dt = t1 - t0
        res["bytes_per_s"].append((tr1["bytes_sent"] + tr1["bytes_received"]
                                   - tr0["bytes_sent"] - tr0["bytes_received"]) / dt)
        res["wire_bytes_per_s"].append((wire1 - wire0) / dt)
        res["messages_per_s"].append((tr1["messages_sent"] - tr0["messages_sent"]) / dt)
        res["suspicions_raised"] += raised1 - raised0
    return res


def kill_and_rejoin(c: Cluster, victim: int) -> dict:
    """Kill node ``victim``, restart it; seconds from the kill to the first suspicion and to
    dead everywhere (None: not within the bound + 30 s), and from the restart to alive
    everywhere (its own start included)."""
    d, vid = c.nodes[victim], c.ids[victim]
    live = [x for x in c.nodes if x is not d]
    d.kill()                   # SIGKILL, and reaped: it is gone from here on
    killed = time.monotonic()
    first = dead_all = None
    give_up = killed + detection_bound(CONFIG, len(c.ids)) + 30
    while dead_all is None and time.monotonic() < give_up:
        views = []
        for x in live:
            views.append(c.states(x)[vid])
            if first is None and views[-1] != "alive":
                first = time.monotonic() - killed
        if all(v == "dead" for v in views):
            dead_all = time.monotonic() - killed
        else:
            time.sleep(KILL_POLL)
    restarted = time.monotonic()
    d.start()                  # returns once it answers HTTP
    ready = time.monotonic()
    wait_until(lambda: all(c.states(x)[vid] == "alive" for x in c.nodes), 60,
               "the restarted node alive everywhere", interval=KILL_POLL)
    # From the restart, not from ready: the node announces itself while still starting, so
    # the others see it alive within milliseconds of its answering HTTP.
    rejoin = time.monotonic() - restarted
    wait_until(c.converged, 60, "full convergence after the restart", interval=KILL_POLL)
    return {"node": victim, "first_suspicion": first, "dead_everywhere": dead_all,
            "rejoin": rejoin, "startup": ready - restarted}


def simulated(n: int, seed: int) -> dict:
    """The simulator's first suspicion (mean) and dead-everywhere p50 / max over 20 kills
    of ``n`` nodes without loss, spaced so that one is over before the next."""
    r = run_cell(n, 0.0, seed=seed, config=CONFIG, steady=60.0, kills=20,
                 kill_spacing=detection_bound(CONFIG, n) + 5)
    return {"first_suspicion_mean": sum(r.first_suspect) / max(1, len(r.first_suspect)),
            "dead_everywhere_p50": percentile(r.detect_all, 50),
            "dead_everywhere_max": max(r.detect_all, default=math.nan)}


def measure(n: int, kills: int, steady_s: float, rng: random.Random, seed: int) -> dict:
    """Everything measured for one cluster size (a fresh lab, always torn down)."""
    root = tempfile.mkdtemp(prefix=f"bench-cluster-{n}-")
    started = time.monotonic()
    try:
        with NetLab(n) as lab:
            c = Cluster(lab, root, n)
            built = time.monotonic() - started
            res = {"n": n, "build_seconds": built, "steady": steady(c, steady_s),
                   "kills": [kill_and_rejoin(c, rng.randrange(1, n)) for _ in range(kills)]}
    except BaseException:
        print(f"daemons' data and logs kept in {root}", file=sys.stderr)
        raise
    shutil.rmtree(root)
    res.update(bound=detection_bound(CONFIG, n), sim=simulated(n, seed),
               wall_seconds=time.monotonic() - started)
    return res


def _stat(values: list, q: float | None) -> float:
    """p50 (q=50) or max (q=None) of the measured values; NaN if none, inf if one is
    missing (a kill never seen dead everywhere)."""
    if not values:
        return math.nan
    if any(v is None for v in values):
        return math.inf
    return max(values) if q is None else percentile(values, q)


def _pair(values: list, width: int = 5, digits: int = 1) -> str:
    """"p50 max" of per-kill times, or "mean max" of per-node rates (digits=0)."""
    if digits:
        return f"{_stat(values, 50):>{width}.{digits}f} {_stat(values, None):>{width}.{digits}f}"
    return f"{sum(values) / len(values):>{width}.0f} {max(values):>{width}.0f}"


HEADER = (f"{'N':>2} | {'1st susp':>11} | {'dead all':>11} {'bound':>5} {'sim':>9} | "
          f"{'rejoin':>9} | {'gossip B/s':>11} {'wire B/s':>11} | {'msg/s':>9} | "
          f"{'false susp':>10} | {'kills':>5} {'wall':>4}")
SUBHEADER = (f"{'':>2} | {'p50   max':>11} | {'p50   max':>11} {'':>5} {'p50/max':>9} | "
             f"{'p50  max':>9} | {'mean   max':>11} {'mean   max':>11} | {'mean  max':>9} | "
             f"{'seen/rais.':>10} | {'':>5} {'s':>4}")


def row(r: dict) -> str:
    """One line of the table for one size (times in seconds)."""
    k, s, sim = r["kills"], r["steady"], r["sim"]
    sim_pair = f"{sim['dead_everywhere_p50']:.1f}/{sim['dead_everywhere_max']:.1f}"
    rates = [round(m, 1) for m in s["messages_per_s"]]
    return (f"{r['n']:>2} | {_pair([x['first_suspicion'] for x in k])} | "
            f"{_pair([x['dead_everywhere'] for x in k])} {r['bound']:>5.1f} {sim_pair:>9} | "
            f"{_pair([x['rejoin'] for x in k], 4)} | {_pair(s['bytes_per_s'], digits=0)} "
            f"{_pair(s['wire_bytes_per_s'], digits=0)} | "
            f"{sum(rates) / len(rates):>4.1f} {max(rates):>4.1f} | "
            f"{s['suspicions_seen']:>4}/{s['suspicions_raised']:<5} | {len(k):>5} "
            f"{r['wall_seconds']:>4.0f}")


def goals(results: list[dict]) -> list[tuple[str, bool]]:
    """(line, met) for every goal, in the house style ``goal ...: meets | FAILS``."""
    out = []
    for r in results:
        worst = _stat([k["dead_everywhere"] for k in r["kills"]], None)
        ok = worst <= r["bound"] or math.isnan(worst)
        out.append((f"goal: {r['n']} nodes, a killed node dead everywhere within "
                    f"{r['bound']:.1f} s: {'meets' if ok else 'FAILS'} (worst {worst:.1f} s "
                    f"over {len(r['kills'])} kills)", ok))
        s = r["steady"]
        ok = s["suspicions_seen"] == 0 and s["suspicions_raised"] == 0
        out.append((f"goal: {r['n']} nodes, no false suspicion in {s['seconds']:.0f} s "
                    f"steady: {'meets' if ok else 'FAILS'} ({s['suspicions_seen']} seen, "
                    f"{s['suspicions_raised']} raised)", ok))
    five = next((r for r in results if r["n"] == 5), None)
    goal = f"goal: gossip <= {GOSSIP_BUDGET} B/s per node at 5 nodes"
    if five is None:
        out.append((f"{goal}: not measured (no 5-node run)", True))
    else:
        worst = max(five["steady"]["bytes_per_s"])
        ok = worst <= GOSSIP_BUDGET
        out.append((f"{goal}: {'meets' if ok else 'FAILS'} (max {worst:.0f} B/s; on the "
                    f"wire {max(five['steady']['wire_bytes_per_s']):.0f} B/s)", ok))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 nodes, 1 kill, 10 s steady")
    parser.add_argument("--sizes", default=None, help="comma-separated cluster sizes")
    parser.add_argument("--kills", type=int, default=None, help="kills per size (5; quick 1)")
    parser.add_argument("--steady", type=float, default=None, help="seconds (60; quick 10)")
    parser.add_argument("--seed", type=int, default=1, help="victims' and simulator's seed")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nft"):
        print("bench.cluster needs root, ip and nft (network namespaces)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else \
        ([3] if args.quick else [3, 5])
    kills = args.kills if args.kills is not None else (1 if args.quick else 5)
    steady_s = args.steady if args.steady is not None else (10.0 if args.quick else 60.0)
    rng = random.Random(args.seed)
    print(f"SWIM membership, real daemons in network namespaces: memberlist LAN parameters "
          f"(probe {CONFIG.probe_interval} s, suspicion {CONFIG.suspicion_mult}-"
          f"{CONFIG.suspicion_mult * CONFIG.suspicion_max_timeout_mult}× T); {steady_s:.0f} s "
          f"steady, {kills} kill(s) per size; seed {args.seed}")
    print(HEADER)
    print(SUBHEADER)
    results = []
    for n in sizes:
        results.append(measure(n, kills, steady_s, rng, args.seed))
        print(row(results[-1]), flush=True)
    print("bound: detection_bound(SwimConfig.lan(), N); sim: the simulator's dead-everywhere "
          "p50/max over 20 kills; rejoin: from the restart, the daemon's start included; gossip: "
          "envelope bytes sent + received; wire: everything on the node's link")
    verdicts = goals(results)
    for line, _ in verdicts:
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seed": args.seed, "quick": args.quick, "sizes": results}, f, indent=1)
    return 0 if all(ok for _, ok in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
