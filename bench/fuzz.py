"""The fuzz of ``make test`` (tests/test_fuzz.py), far longer: hostile requests to every
operation of the daemon's OpenAPI document, against one real daemon.

    python -m bench.fuzz [--examples 20000] [--seed N] [--work DIR]

The examples are shared out over the operations as in the test (by what each takes). Unlike
the test, a failing request does not stop the run: every 5xx and every traceback is counted
(the first few of each kind are printed with the request that caused them). Prints examples
run, 5xx, tracebacks, and a verdict line: ``meets`` when both are 0, ``FAILS`` otherwise (exit
status 1).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fuzzing as F  # noqa: E402  (the request generation lives with the tests)
from harness import Daemon  # noqa: E402

SHOW = 3


def signature(failure: str) -> str:
    """What kind of failure: the last exception line of the logged traceback, or the
    status line (one request per kind is printed)."""
    found = re.findall(r"\\n([A-Za-z_.]+(?:Error|Exception|Exit)\b.{0,200}?)(?:\\n|\"\}|$)",
                       failure)
    return found[-1] if found else failure.split(" for <", 1)[0][:100]


def fuzz_operation(target: F.Target, op: F.Operation, examples: int, run_seed: int,
                   failures: list) -> None:
    @seed(run_seed)
    @settings(max_examples=examples, database=None, deadline=None, print_blob=False,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data):
        req = data.draw(F.request(target, op))
        try:
            F.check(target, req)
        except AssertionError as exc:  # counted in target.stats; keep going
            failures.append(str(exc))
            kind = signature(str(exc))
            if sum(signature(f) == kind for f in failures) <= SHOW:
                print(f"FAILURE ({kind}): {str(exc)[:3000]}\n", flush=True)

    run()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--work", default=None, help="directory for the daemon's data")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="artstore-fuzz-", dir=args.work)
    daemon = Daemon(os.path.join(work, "node"), config=F.DAEMON_CONFIG).start()
    failures: list[str] = []
    started = time.monotonic()
    try:
        target = F.prepare(daemon)
        ops = F.operations(target.doc)
        total = sum(op.weight for op in ops)
        for i, op in enumerate(ops):  # each operation's share as in the test
            per_op = max(1, round(args.examples * op.weight / total))
            fuzz_operation(target, op, per_op, args.seed + i, failures)
            print(f"  {op.name}: {per_op} examples "
                  f"({target.stats.get('requests', 0)} so far)", flush=True)
        tail = [line for line in F.log_problems(daemon.log_lines())
                if "Traceback (most recent call last)" in line]
    finally:
        daemon.kill()
    stats = target.stats
    seconds = time.monotonic() - started
    fives, tracebacks = stats.get("5xx", 0), stats.get("tracebacks", 0)
    tracebacks = max(tracebacks, len(tail))
    print(f"examples run: {stats.get('requests', 0)} over {len(ops)} operations "
          f"in {seconds:.0f} s ({stats.get('requests', 0) / seconds:.0f}/s)")
    print("statuses: " + ", ".join(f"{s}: {n}" for s, n in
                                   sorted(stats.get("statuses", {}).items(), key=str)))
    print(f"failed requests (5xx, traceback or error logged, not a problem document): "
          f"{len(failures)}")
    for kind, n in collections.Counter(signature(f) for f in failures).most_common():
        print(f"  {n:6d}  {kind}")
    print(f"5xx: {fives}")
    print(f"tracebacks: {tracebacks}")
    verdict = "meets" if fives == 0 and tracebacks == 0 and not failures else "FAILS"
    print(f"verdict: {verdict} (goal: 0 5xx and 0 tracebacks)")
    if verdict == "meets":
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"daemon log: {daemon.log_path}")
    return 0 if verdict == "meets" else 1


if __name__ == "__main__":
    sys.exit(main())
