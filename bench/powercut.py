"""``make bench-crash``: a soak of power cuts, far past what ``make test`` runs.

    python -m bench.powercut [--cycles 1000] [--fs ext4,xfs] [--work DIR] [--seed N]

Uses the test suite's harness (tests/powercut.py): LMDB and two disk roots on direct-I/O
loop images, a mixed load (uploads small and streamed, PATCHes, DELETEs, rebuild jobs,
mode changes), the filesystems shut down with NOLOGFLUSH at a random moment, fsck, remount,
restart, and every acknowledgement checked. Cases rotate over ext4/XFS × syncfs/fsync ×
edit/rw, each case a fresh set of images. Prints cycles, operations acknowledged and the
lost / resurrected / partial counts, which must all be 0 (exit status 1 otherwise). Root.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))

import powercut as P  # noqa: E402  (the harness lives with the tests)

CYCLES_PER_CASE = 25


def _classify(exc: AssertionError) -> str:
    text = str(exc)
    if "lost" in text:
        return "lost"
    if "undone" in text or "brought back" in text:
        return "resurrected"
    return "partial"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--fs", default="ext4,xfs")
    parser.add_argument("--work", default=None, help="directory for the images (default: tmp)")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.powercut needs root (loop devices, mounts)", file=sys.stderr)
        return 2
    missing = P.have_tools()
    if missing:
        print(f"missing commands: {missing} (scripts/install-system-deps.sh)", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    cases = itertools.cycle([(fs, sync, mode) for fs in args.fs.split(",")
                             for sync in ("syncfs", "fsync") for mode in ("edit", "rw")])
    totals = {"cycles": 0, "cuts_during_recovery": 0, "uploads": 0, "patches": 0,
              "deletes": 0, "rebuild_jobs": 0, "mode_changes": 0}
    failures = {"lost": 0, "resurrected": 0, "partial": 0}
    started = time.monotonic()
    print(f"power-cut soak: {args.cycles} cycles, seed {args.seed}")
    while totals["cycles"] < args.cycles and not any(failures.values()):
        fs, sync, mode = next(cases)
        n = min(CYCLES_PER_CASE, args.cycles - totals["cycles"])
        work = tempfile.mkdtemp(prefix="powercut-", dir=args.work)
        rig = P.PowerCutRig(work, fs, sync, mode)
        ledger = P.Ledger(mode)
        try:
            rig.start()
            try:
                counts = P.run_cycles(rig, ledger, n, rng, set())
            except AssertionError as exc:
                failures[_classify(exc)] += 1
                print(f"FAILED in {fs}/{sync}/{mode}: {exc}")
                counts = {"cycles": 0, "cuts_during_recovery": 0}
            for key, value in {**counts, **P.summary(ledger)}.items():
                totals[key] += value
        finally:
            rig.close()
            shutil.rmtree(work, ignore_errors=True)
        minutes = (time.monotonic() - started) / 60
        print(f"{totals['cycles']:>5} cycles ({minutes:.1f} min) after {fs}/{sync}/{mode}: "
              + ", ".join(f"{k} {v}" for k, v in totals.items() if k != "cycles"))
    ok = not any(failures.values()) and totals["cycles"] >= args.cycles
    print(f"\npower-cut soak: {totals['cycles']} cycles "
          f"(+{totals['cuts_during_recovery']} cuts during recovery); acknowledged "
          f"{totals['uploads']} uploads, {totals['patches']} patches, {totals['deletes']} "
          f"deletes, {totals['rebuild_jobs']} rebuild jobs, {totals['mode_changes']} mode "
          f"changes; lost {failures['lost']}, resurrected {failures['resurrected']}, "
          f"partial {failures['partial']}: {'meets' if ok else 'FAILS'} (all must be 0)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
