"""Placement and repair at 10, 100 and 1,000 nodes: balance, a join, a node loss and the
anti-entropy digest, simulated with the placement code the daemon runs, beside the model.

    python -m bench.placement [--quick] [--files F] [--sizes 10,100,1000] [--joins J]
                              [--bandwidth-MBps B] [--file-MiB S] [--seed N] [--json PATH]

The model (``replication.placement``; F files, N nodes, factor rf, S bytes a file, B bytes/s
of repair bandwidth a node, each way):

- Owners are the rf highest scores -w/ln(h), h = XXH3(node, file) in (0, 1): the first rf
  arrivals of exponential clocks of rate w, i.e. rf draws without replacement ∝ weight
  (Plackett–Luce). Equal weights: a node holds a file with p = rf/N, its copies are
  Binomial(F, p): CV = √((1-p)/(F·p)), max/mean ≈ 1 + z_N·CV, z_N = Φ⁻¹((N-0.375)/(N+0.25))
  (the expected largest of N normals). Mixed weights (a third of the nodes at 2×): a node's
  share is its Plackett–Luce inclusion probability, *below* ∝ weight for the heavy ones
  when rf > 1 (one copy of a file a node); max/mean and CV are then of copies ÷ weight
  (how full a node is), model per class with the spread between classes added.
- Join of a node of weight w: it enters a file's top rf with p = PL(w) (rf·w/(W+w) for
  rf = 1; rf/(N+1) at equal weights) and takes that copy from the rf-th owner: files
  touched rf/(N+1), copies moved 1/(N+1) of all copies, no file loses more than one owner,
  nothing else moves. Goal: copies moved ÷ copies ≤ 1.2 × 1/N (a goal on files touched
  could hold only for rf = 1). Time: every moved copy goes to the newcomer, moved × S / B.
- Loss of a node (equal weights): its L ≈ F·rf/N copies are re-created on each file's next
  ranked node, sent by its first remaining owner. Ideal (even spread): L·S / (senders·B),
  senders = the survivors sharing a file with it (N-1 once F is large). Simulated: the
  busiest sender, ≈ μ + z·√μ copies with μ = L/(N-1) (the Poisson quantile, as μ may be
  small), times S / B. Also: the busiest
  receiver, and the busiest sender if every remaining owner pushes (repair.py's pairwise
  passes, all started ROSTER_SETTLE_SECONDS after the roster change, can each push).
- A digest pass per owner pair sharing M files: request E + answer E + 1,024 × 9 bytes
  (msgpack uint64); if d buckets differ, a list request E + d·2.6 bytes and an answer
  E + d·(1 + (M-1)/1,024)·(39 + len(stamp)) bytes (a bucket that holds a differing file is
  one file fuller than the average); k differing files touch d = 1,024·(1-(1-1/1,024)^k)
  buckets. E: the signed envelope (measured). A listing carries at most ``LISTED_FILES``
  files (whole buckets; the rest are asked for next), so it stays under MAX_ENVELOPE_BYTES
  up to ~50 million files per pair (one bucket's worth).

Computed from the hashes: an F × N matrix of XXH3 per N (~0.2 µs each), the top rf+1 of
each file kept; a join costs F hashes; every node is a loss victim in turn. A sample of files
is checked against ``placement.owners`` itself (exit status 1 on any mismatch, on a file
losing two owners, or on a missed join goal). Times scale linearly with F·S; at real scale
(millions of files a node) busiest/ideal tends to 1 + z_(N-1)/√μ, i.e. to 1.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import sys
import time
import uuid
from statistics import NormalDist

import numpy as np
import xxhash
from nacl.signing import SigningKey

from artstored.replication import digest as G
from artstored.replication import placement as P
from artstored.replication.envelope import MAX_ENVELOPE_BYTES, Signer

RFS = (2, 3)
GOAL_JOIN = 1.2          # copies moved ≤ GOAL_JOIN × 1/N
STAMP = "1:2026-11-27T12:00:00.000000Z"   # version:updated_at, as repair._stamp makes it


def z_max(n: int) -> float:
    return NormalDist().inv_cdf((n - 0.375) / (n + 0.25)) if n > 1 else 0.0


def poisson_max(mu: float, n: int) -> int:
    """The expected largest of n Poisson(mu), as the quantile (n-0.375)/(n+0.25)."""
    q, x, cdf = (n - 0.375) / (n + 0.25), 0, 0.0
    while True:
        cdf += math.exp(x * math.log(mu) - mu - math.lgamma(x + 1))
        if cdf >= q:
            return x
        x += 1


@functools.lru_cache(maxsize=None)
def pl_heavy(h: int, l: int, k: int, wh: float) -> float:
    """Expected heavy nodes (weight wh; the l others weight 1) among k PL draws."""
    if k == 0 or h + l == 0:
        return 0.0
    tot = wh * h + l
    return ((wh * h / tot) * (1 + pl_heavy(h - 1, l, k - 1, wh)) if h else 0.0) + \
        ((l / tot) * pl_heavy(h, l - 1, k - 1, wh) if l else 0.0)


def class_model(n: int, heavy: int, rf: int, files: int) -> dict:
    """Per-class inclusion p, and max/mean and CV of copies ÷ weight over the nodes."""
    eh = pl_heavy(heavy, n - heavy, rf, 2.0)
    classes = [(heavy, 2.0, eh / max(heavy, 1)), (n - heavy, 1.0, (rf - eh) / (n - heavy))]
    classes = [c for c in classes if c[0]]
    fill = [(c, files * p / w, (files * p * (1 - p)) ** 0.5 / w) for c, w, p in classes]
    mean = sum(c * m for c, m, _ in fill) / n
    var = sum(c * (s * s + (m - mean) ** 2) for c, m, s in fill) / n
    top = max(m + z_max(c) * s for c, m, s in fill)
    return {"max_mean": top / mean, "cv": var ** 0.5 / mean,
            "ratio": (eh / heavy) / ((rf - eh) / (n - heavy)) if heavy else 1.0}


def hash_matrix(fids: list[bytes], nodes: list[str]) -> np.ndarray:
    """XXH3-64 of ``node\\0file`` (placement._uniform's input) for every pair: F × N."""
    pre, h = [n.encode() + b"\x00" for n in nodes], xxhash.xxh3_64_intdigest
    return np.fromiter((h(p + f) for f in fids for p in pre), np.uint64,
                       len(fids) * len(pre)).reshape(len(fids), len(pre))


def scores(hashes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return -weights / np.log((hashes.astype(np.float64) + 0.5) / float(1 << 64))


def simulate(n: int, files: list[str], fbytes: list[bytes], joins: int, rng: random.Random,
             size: int, bw: float) -> dict:
    nodes = [f"n-{rng.getrandbits(64):016x}" for _ in range(n)]
    joiners = [f"n-{rng.getrandbits(64):016x}" for _ in range(joins)]
    heavy = n // 3
    wts = {"equal": np.ones(n), "mixed": np.array([2.0] * heavy + [1.0] * (n - heavy))}
    k, nf = min(max(RFS) + 1, n), len(files)
    top = {w: np.empty((nf, k), np.int32) for w in wts}
    tops = {w: np.empty((nf, k)) for w in wts}
    chunk = max(1, 2_000_000 // n)
    for a in range(0, nf, chunk):
        hm = hash_matrix(fbytes[a:a + chunk], nodes)
        for w, wv in wts.items():
            sc = scores(hm, wv)
            idx = np.argpartition(-sc, k - 1, axis=1)[:, :k]
            s = np.take_along_axis(sc, idx, 1)
            order = np.argsort(-s, axis=1, kind="stable")
            top[w][a:a + chunk] = np.take_along_axis(idx, order, 1)
            tops[w][a:a + chunk] = np.take_along_axis(s, order, 1)
    new = scores(hash_matrix(fbytes, joiners), np.ones(joins))     # F × J, weight 1
    out = {"n": n, "balance": [], "join": [], "loss": []}
    for w in wts:
        for rf in RFS:
            counts = np.bincount(top[w][:, :rf].ravel(), minlength=n) / wts[w]
            m = class_model(n, heavy if w == "mixed" else 0, rf, nf)
            hl = counts[:heavy].mean() / counts[heavy:].mean() * 2 if w == "mixed" else 1.0
            out["balance"].append({"weights": w, "rf": rf, "mean": float(counts.mean()),
                                   "max_mean": float(counts.max() / counts.mean()),
                                   "cv": float(counts.std() / counts.mean()),
                                   "heavy_light": float(hl), "model": m})
            entered = (new > tops[w][:, rf - 1:rf]).sum(axis=0)      # copies moved a join
            frac = entered / (nf * rf)
            hv = heavy if w == "mixed" else 0       # the newcomer is one more light node
            p_new = (rf - pl_heavy(hv, n + 1 - hv, rf, 2.0)) / (n + 1 - hv)
            out["join"].append({"weights": w, "rf": rf, "moved_copies": float(frac.mean()),
                                "max_join": float(frac.max()), "files": float(frac.mean() * rf),
                                "model": p_new / rf, "ideal": 1 / (n + 1), "goal": GOAL_JOIN / n,
                                "seconds": float(entered.mean() * size / bw)})
    for rf in RFS:     # loss, equal weights: every node the victim in turn
        t = top["equal"]
        send, recv, push = (np.zeros(n * n, np.int64) for _ in range(3))
        for j in range(rf):
            v = t[:, j].astype(np.int64) * n
            send += np.bincount(v + t[:, 1 if j == 0 else 0], minlength=n * n)
            recv += np.bincount(v + t[:, rf], minlength=n * n)
            for i in set(range(rf)) - {j}:
                push += np.bincount(v + t[:, i], minlength=n * n)
        send, recv, push = (x.reshape(n, n) for x in (send, recv, push))
        lost, senders = send.sum(axis=1), (send > 0).sum(axis=1)
        mu = lost.mean() / (n - 1)
        out["loss"].append({
            "rf": rf, "lost": float(lost.mean()), "senders": int(senders.min()),
            "ideal_s": float((lost / senders).mean() * size / bw),
            "busiest_s": float(send.max(axis=1).mean() * size / bw),
            "model_s": float(poisson_max(mu, n - 1) * size / bw),
            "worst_s": float(send.max() * size / bw), "recv_s": float(recv.max() * size / bw),
            "allpush_s": float(push.max() * size / bw)})
    out["check"] = check(files, nodes, joiners[0], wts, top, min(nf, 250_000 // n))
    t0, weights = time.perf_counter(), dict(zip(nodes, wts["equal"]))
    for f in files[:200]:     # what replicator.owners costs per file (weights dict + owners)
        P.owners(f, {x: float(y) for x, y in weights.items()}, 3)
    out["owners_us"] = (time.perf_counter() - t0) / 200 * 1e6
    return out


def check(files, nodes, joiner, wts, top, sample) -> dict:
    """``placement.owners`` itself on a sample: the same owners as the matrix, before and
    after a join; how many owners a file loses in the join."""
    mismatches, worst = 0, 0
    for w, wv in wts.items():
        before = dict(zip(nodes, map(float, wv)))
        after = {**before, joiner: 1.0}
        for i, f in enumerate(files[:sample]):
            old, new = P.owners(f, before, max(RFS)), P.owners(f, after, max(RFS))
            mismatches += old != [nodes[x] for x in top[w][i, :max(RFS)]]
            for rf in RFS:
                worst = max(worst, len(set(old[:rf]) - set(new[:rf])))
        moved = P.moved(files[:min(sample, 100)], before, after, max(RFS))
        mismatches += len(moved) != sum(joiner in P.owners(f, after, max(RFS))
                                        for f in files[:min(sample, 100)])
    return {"sample": sample, "mismatches": mismatches, "most_owners_lost": worst}


def digest_cost(pair_files: int, rng: random.Random) -> tuple[list[dict], int, int]:
    """One owner pair sharing ``pair_files`` files: bytes of a pass when k files differ,
    with the real digests, bucket listing and signed envelopes."""
    signer, peer = Signer("n-00000000000000aa", SigningKey.generate()), "n-00000000000000bb"
    env = len(signer.pack({})) - 1
    ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(pair_files)]
    bucket = {f: G.bucket_of(f, G.DEFAULT_BUCKETS) for f in ids}
    mine = {f: STAMP for f in ids}
    entry = 38 + 1 + len(STAMP)
    rows = []
    for k in (0, 1, 100):
        theirs = dict(mine)
        for f in rng.sample(ids, k):
            theirs[f] = "2" + STAMP[1:]
        a, b = G.digests(mine.items(), G.DEFAULT_BUCKETS), G.digests(theirs.items(),
                                                                       G.DEFAULT_BUCKETS)
        diff = G.differing(a, b)
        wanted = set(diff)
        listing = {f: s for f, s in theirs.items() if bucket[f] in wanted}
        sizes = [len(signer.pack({"t": "digest", "rcpt": peer})),
                 len(signer.pack({"t": "digest", "digests": b, "document_version": 7,
                                  "rcpt": peer}))]
        if diff:
            sizes += [len(signer.pack({"t": "digest", "list": diff, "rcpt": peer})),
                      len(signer.pack({"t": "digest", "files": listing, "document_version": 7,
                                       "rcpt": peer}))]
        d = G.DEFAULT_BUCKETS * (1 - (1 - 1 / G.DEFAULT_BUCKETS) ** k)
        per_bucket = 1 + (pair_files - 1) / G.DEFAULT_BUCKETS   # size-biased: holds a diff
        model = 2 * env + 9 * G.DEFAULT_BUCKETS + (
            2 * env + d * 2.6 + d * per_bucket * entry if k else 0)
        rows.append({"pair_files": pair_files, "k": k, "buckets": len(diff), "buckets_model": d,
                     "bytes": sum(sizes), "model": model, "listing": sizes[-1] if diff else 0})
    return rows, env, entry


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 and 100 nodes, 20,000 files")
    ap.add_argument("--sizes", default=None)
    ap.add_argument("--files", type=int, default=None)
    ap.add_argument("--joins", type=int, default=None, help="joins averaged a cluster size")
    ap.add_argument("--bandwidth-MBps", type=float, default=100.0, dest="bw")
    ap.add_argument("--file-MiB", type=float, default=1.0, dest="size")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else \
        ([10, 100] if args.quick else [10, 100, 1000])
    nf = args.files or (20_000 if args.quick else 100_000)
    joins = args.joins or (10 if args.quick else 20)
    bw, size = args.bw * 1e6, args.size * (1 << 20)
    rng = random.Random(args.seed)
    files = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(nf)]
    fbytes = [f.encode() for f in files]
    started = time.perf_counter()
    print(f"Placement by weighted rendezvous hashing: {nf:,} files, rf {RFS}, {joins} joins "
          f"a size, repair at {args.bw:g} MB/s a node, {args.size:g} MiB a file; seed {args.seed}")
    results = []
    for n in sizes:
        t0 = time.perf_counter()
        results.append(simulate(n, files, fbytes, joins, rng, size, bw))
        results[-1]["seconds"] = time.perf_counter() - t0
    ok = True
    print("\n1. Balance: copies a node (mixed: ÷ weight; a third of the nodes at 2×)")
    print(f"{'N':>5} {'rf':>2} {'weights':>7} | {'mean':>7} | {'max/mean':>8} {'model':>6} | "
          f"{'CV':>6} {'model':>6} | {'heavy:light':>11} {'PL':>5} {'∝w':>4} {'error':>6}")
    for r in results:
        for b in r["balance"]:
            m, mixed = b["model"], b["weights"] == "mixed"
            hl = f"{b['heavy_light']:>11.3f} {m['ratio']:>5.3f} {2.0 if mixed else 1.0:>4.1f} " \
                f"{b['heavy_light'] / (2.0 if mixed else 1.0) - 1:>+6.1%}"
            print(f"{r['n']:>5} {b['rf']:>2} {b['weights']:>7} | {b['mean']:>7.0f} | "
                  f"{b['max_mean']:>8.3f} {m['max_mean']:>6.3f} | {b['cv']:>6.3f} "
                  f"{m['cv']:>6.3f} | {hl}")
    print("\n2. Join N → N+1 (a node of weight 1): copies moved ÷ all copies, mean of the joins")
    print(f"{'N':>5} {'rf':>2} {'weights':>7} | {'moved':>8} {'model':>8} {'1/(N+1)':>8} "
          f"{'worst':>8} | {'files':>7} | {'time s':>7} | goal ≤ {GOAL_JOIN}/N")
    for r in results:
        for j in r["join"]:
            good = j["moved_copies"] <= j["goal"]
            ok &= good
            print(f"{r['n']:>5} {j['rf']:>2} {j['weights']:>7} | {j['moved_copies']:>8.5f} "
                  f"{j['model']:>8.5f} {j['ideal']:>8.5f} {j['max_join']:>8.5f} | "
                  f"{j['files']:>7.4f} | {j['seconds']:>7.0f} | {j['goal']:.5f} "
                  f"{'meets' if good else 'BELOW'}")
    for r in results:
        c = r["check"]
        good = c["mismatches"] == 0 and c["most_owners_lost"] <= 1
        ok &= good
        print(f"check N={r['n']}: placement.owners on {c['sample']:,} files × 2 weightings, "
              f"before and after a join: {c['mismatches']} mismatches with the matrix, a file "
              f"lost at most {c['most_owners_lost']} owner(s) {'ok' if good else 'FAILS'}")
    print(f"\n3. Node loss (equal weights), every node the victim in turn; seconds at "
          f"{args.bw:g} MB/s, {args.size:g} MiB a file")
    print(f"{'N':>5} {'rf':>2} | {'copies':>7} {'GB':>6} {'senders':>7} | {'ideal':>6} | "
          f"{'busiest':>7} {'model':>6} {'worst':>6} {'÷ideal':>6} | {'recv':>6} | {'all push':>8}")
    for r in results:
        for x in r["loss"]:
            print(f"{r['n']:>5} {x['rf']:>2} | {x['lost']:>7.0f} {x['lost'] * size / 1e9:>6.2f} "
                  f"{x['senders']:>7} | {x['ideal_s']:>6.3g} | {x['busiest_s']:>7.3g} "
                  f"{x['model_s']:>6.3g} {x['worst_s']:>6.3g} "
                  f"{x['busiest_s'] / x['ideal_s']:>6.2f} | {x['recv_s']:>6.3g} | "
                  f"{x['allpush_s']:>8.3g}")
    print("copies: the victim's (mean); senders: fewest distinct over victims; busiest: the "
          "busiest sender (mean over victims), worst: over victims; recv: busiest receiver "
          "(worst); all push: busiest sender if every remaining owner pushes (worst)")
    print("a lost node of 10 TB, ideal (even spread over N-1): " + ", ".join(
        f"N={r['n']} {10e12 / ((r['n'] - 1) * bw) / 60:.0f} min" for r in results))
    print("\n4. Anti-entropy digest pass, one owner pair (request and answer bytes, signed)")
    print(f"{'pair files':>10} {'k':>4} | {'buckets':>7} {'model':>6} | {'bytes':>9} "
          f"{'model':>9} | {'listing':>9}")
    pair_sizes = [10_000] if args.quick else [10_000, 100_000]
    digest_rows = []
    for m in pair_sizes:
        rows, env, entry = digest_cost(m, rng)
        digest_rows += rows
        for d in rows:
            print(f"{m:>10,} {d['k']:>4} | {d['buckets']:>7} {d['buckets_model']:>6.1f} | "
                  f"{d['bytes']:>9,} {d['model']:>9,.0f} | {d['listing']:>9,}")
    cap = MAX_ENVELOPE_BYTES / entry
    print(f"envelope E = {env} bytes, {entry} bytes a listed file: a listing of every bucket is "
          f"refused (> {MAX_ENVELOPE_BYTES >> 20} MiB) past {cap:,.0f} shared files; of d "
          f"buckets past {cap:,.0f}·1,024/d (d = 95, 100 files differ: {cap * 1024 / 95:,.0f})")
    for r in results:
        zero = next(d["bytes"] for d in digest_rows if d["k"] == 0)
        print(f"N={r['n']}: a pass asks ~{r['n'] - 1} peers: {(r['n'] - 1) * zero / 1e6:.2f} MB "
              f"sent+received by a node with nothing differing; owners() {r['owners_us']:.0f} µs "
              f"a file, and each peer's digest request walks the catalog: "
              f"{r['n'] * r['owners_us']:,.0f} s of CPU a node per pass per million files held")
    took = ", ".join(f"N={r['n']} {r['seconds']:.1f} s" for r in results)
    print(f"\nsimulation {took}; "
          f"total {time.perf_counter() - started:.0f} s")
    worst = max((j["moved_copies"] * r["n"], r["n"], j["rf"], j["weights"])
                for r in results for j in r["join"])
    print(f"goal: copies moved by a join ≤ {GOAL_JOIN} × 1/N, no file losing two owners: "
          f"{'meets' if ok else 'BELOW goal'} (worst {worst[0]:.3f}/N at N={worst[1]}, "
          f"rf {worst[2]}, {worst[3]})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"files": nf, "seed": args.seed, "bandwidth_Bps": bw, "file_bytes": size,
                       "sizes": results, "digest": digest_rows}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
