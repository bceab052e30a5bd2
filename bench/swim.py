"""The SWIM membership protocol in the simulator: 10, 100 and 1,000 nodes × 0%, 1% and 5%
message loss, beside what the SWIM paper and memberlist's formulas predict.

    python -m bench.swim [--quick] [--sizes 10,100,1000] [--losses 0,0.01,0.05]
                         [--seed N] [--json PATH]

Each cell is one deterministic run (``artstored.replication.simulate.run_cell``) of the
same ``Membership`` code the daemon is to run, with memberlist's LAN parameters: a
warm-up, a steady period without failures (false suspicions counted; a new cluster
document published every few seconds and its spread timed), then crashes a few seconds
apart, each timed until every live node holds the victim dead. False deaths are counted
over the whole run.

Columns:
- ``1st susp``: kill → first suspicion anywhere (mean); SWIM: e/(e-1)·T to the first probe
  of the failed member, plus the probe period that ends in the suspicion;
- ``detect p50/p99``: kill → *every* live node holds it dead, over the kills (nearest rank,
  so with fewer than 100 kills p99 is the worst one); ``formula``: first suspicion + min
  suspicion timeout (Lifeguard, K confirmations reached) + dissemination, and in brackets
  memberlist's [min, max] suspicion timeouts 4·max(1, log10 N)·T and 6× that;
- ``false susp/node-h``: suspicions raised by a node's own failed probe of a live member;
  SWIM: 3600/T · (1-(1-p)²)·(1-(1-p)⁴)^k;
- ``doc p50/max``: publish → every live node holds that version; formula: gossip interval ×
  ln N / ln(1 + fan-out).

Ends with a verdict line for the goal at 1,000 nodes and 1% loss: no false death, detection
p99 under 30 s, a new document everywhere in under 10 s (exit status 1 if missed).
``--quick``: 10 and 50 nodes, short periods, a few seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

from artstored.replication.simulate import CellResult, percentile, run_cell
from artstored.replication.swim_config import (SwimConfig, gossip_rounds, retransmit_limit,
                                               suspicion_bounds, swim_false_positive_per_probe,
                                               swim_first_detection_periods)

GOAL = {"n": 1000, "loss": 0.01, "detect_p99": 30.0, "doc_max": 10.0}

# Per cluster size: simulated seconds of steady state, kills and their spacing. Small
# clusters are cheap, so they run longer (more node-hours, more kills); killed nodes are
# revived once everyone saw them dead, so ten nodes never run short of members.
PLAN = {
    10: dict(steady=1800.0, doc_every=10.0, kills=30, kill_spacing=8.0),
    50: dict(steady=600.0, doc_every=10.0, kills=15, kill_spacing=5.0),
    100: dict(steady=600.0, doc_every=10.0, kills=15, kill_spacing=5.0),
    1000: dict(steady=90.0, doc_every=10.0, kills=10, kill_spacing=3.0),
}
QUICK_PLAN = {
    10: dict(steady=300.0, doc_every=10.0, kills=8, kill_spacing=8.0),
    50: dict(steady=120.0, doc_every=10.0, kills=5, kill_spacing=5.0),
}


def formulas(config: SwimConfig, n: int, loss: float) -> dict:
    """What the literature predicts for one cell (seconds, per node-hour)."""
    t = config.probe_interval
    low, high = suspicion_bounds(config, n)
    first = swim_first_detection_periods() * t + t
    spread = config.gossip_interval * gossip_rounds(n, config.gossip_nodes)
    return {
        "first_suspicion": first,
        "detect": first + low + spread,
        "suspicion_min": low, "suspicion_max": high,
        "false_suspicions_per_node_hour":
            3600.0 / t * swim_false_positive_per_probe(loss, config.indirect_checks),
        "doc": spread,
        "retransmit_limit": retransmit_limit(config, n),
    }


def _f(x: float, width: int = 6, digits: int = 1) -> str:
    return f"{'-':>{width}}" if x is None or (isinstance(x, float) and math.isnan(x)) \
        else f"{x:>{width}.{digits}f}"


HEADER = (f"{'N':>5} {'loss':>5} | {'1st susp':>8} {'SWIM':>5} | {'detect':>6} {'p99':>6} "
          f"{'formula [min, max]':>20} | {'false susp/node-h':>17} {'SWIM':>7} "
          f"{'false':>5} | {'doc p50':>7} {'max':>5} {'formula':>7} | {'node-h':>6} "
          f"{'kills':>5} {'wall s':>6}")
SUBHEADER = (f"{'':>5} {'':>5} | {'mean s':>8} {'s':>5} | {'p50 s':>6} {'s':>6} {'s':>20} | "
             f"{'':>17} {'':>7} {'deaths':>5} | {'s':>7} {'s':>5} {'s':>7} |")


def row(r: CellResult, f: dict) -> str:
    detect_p50 = percentile(r.detect_all, 50)
    detect_p99 = percentile(r.detect_all, 99)
    first = statistics.fmean(r.first_suspect) if r.first_suspect else math.nan
    formula = f"{f['detect']:.1f} [{f['suspicion_min']:.0f}, {f['suspicion_max']:.0f}]"
    kills = f"{len(r.detect_all)}" + (f"+{r.undetected}!" if r.undetected else "")
    return (f"{r.n:>5} {r.loss * 100:>4.0f}% | {_f(first, 8)} {_f(f['first_suspicion'], 5)} | "
            f"{_f(detect_p50)} {_f(detect_p99)} {formula:>20} | "
            f"{_f(r.false_suspicions_per_node_hour, 17, 3)} "
            f"{_f(f['false_suspicions_per_node_hour'], 7, 3)} {r.false_deaths:>5} | "
            f"{_f(percentile(r.doc_times, 50), 7, 2)} "
            f"{_f(max(r.doc_times, default=math.nan), 5, 2)} "
            f"{_f(f['doc'], 7, 2)} | {r.node_hours:>6.1f} {kills:>5} {r.wall_seconds:>6.1f}")


def verdict(results: list[CellResult]) -> tuple[str, bool]:
    cell = next((r for r in results if r.n == GOAL["n"] and r.loss == GOAL["loss"]), None)
    goal = (f"goal at {GOAL['n']} nodes, {GOAL['loss']:.0%} loss: no false death, detection "
            f"p99 < {GOAL['detect_p99']:.0f} s, document everywhere < {GOAL['doc_max']:.0f} s")
    if cell is None:
        return f"verdict: not measured (no {GOAL['n']}-node run) ({goal})", True
    p99 = percentile(cell.detect_all, 99)
    doc = max(cell.doc_times, default=math.inf)
    misses = []
    if cell.false_deaths:
        misses.append(f"{cell.false_deaths} false deaths")
    if cell.undetected or not p99 < GOAL["detect_p99"]:
        misses.append(f"detection p99 {p99:.1f} s, {cell.undetected} undetected")
    if cell.doc_unconverged or not doc < GOAL["doc_max"]:
        misses.append(f"document max {doc:.1f} s, {cell.doc_unconverged} unconverged")
    if misses:
        return f"verdict: FAILS ({'; '.join(misses)}) ({goal})", False
    return (f"verdict: meets (0 false deaths, detection p99 {p99:.1f} s, document max "
            f"{doc:.2f} s over {len(cell.doc_times)} publications) ({goal})", True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 and 50 nodes, short runs")
    parser.add_argument("--sizes", default=None, help="comma-separated cluster sizes")
    parser.add_argument("--losses", default="0,0.01,0.05", help="comma-separated loss rates")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    plan = QUICK_PLAN if args.quick else PLAN
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else \
        ([10, 50] if args.quick else [10, 100, 1000])
    losses = [float(x) for x in args.losses.split(",")]
    config = SwimConfig.lan()

    print(f"SWIM/Lifeguard simulation, memberlist LAN parameters: probe "
          f"{config.probe_interval} s, timeout {config.probe_timeout} s, "
          f"k={config.indirect_checks}, suspicion {config.suspicion_mult}×max(1,log10 N)×T "
          f"up to ×{config.suspicion_max_timeout_mult}, "
          f"K={config.suspicion_confirmations}, gossip {config.gossip_nodes}/"
          f"{config.gossip_interval} s, retransmit {config.retransmit_mult}×ceil(log10(N+1)); "
          f"latency 0.5–5 ms; seed {args.seed}")
    print(HEADER)
    print(SUBHEADER)
    results, started = [], time.perf_counter()
    for n in sizes:
        p = plan.get(n) or min(plan.items(), key=lambda kv: abs(kv[0] - n))[1]
        for loss in losses:
            r = run_cell(n, loss, seed=args.seed, config=config, **p)
            results.append(r)
            print(row(r, formulas(config, n, loss)), flush=True)
    print(f"p99 is over the kills of a cell (nearest rank): with fewer than 100 kills, the "
          f"worst one. Total {time.perf_counter() - started:.0f} s.")
    line, ok = verdict(results)
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seed": args.seed, "quick": args.quick, "cells": [
                dict(r.as_dict(), formulas=formulas(config, r.n, r.loss)) for r in results]},
                f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
