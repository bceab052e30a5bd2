"""A load generator in its own process (so it never shares a GIL with a server): N
concurrent keep-alive connections repeating one request, for a number of requests or
seconds. Prints one JSON line: ops, seconds, ops_per_s, p50_ms, p99_ms, errors.

    python -m bench.loadgen '{"url": ..., "method": "POST", "headers": {...},
                              "body_file": ..., "concurrency": 16, "requests": 2000}'
"""

import asyncio
import json
import sys
import time

import aiohttp


async def _worker(session, spec, body, latencies, errors, deadline, budget):
    while True:
        if budget is not None:
            if budget[0] <= 0:
                return
            budget[0] -= 1
        elif time.perf_counter() >= deadline:
            return
        started = time.perf_counter()
        try:
            async with session.request(spec["method"], spec["url"], data=body,
                                       headers=spec.get("headers")) as resp:
                await resp.read()
                ok = resp.status < 300
        except aiohttp.ClientError:
            ok = False
        latencies.append(time.perf_counter() - started)
        if not ok:
            errors[0] += 1


async def run(spec: dict) -> dict:
    body = None
    if spec.get("body_file"):
        with open(spec["body_file"], "rb") as f:
            body = f.read()
    latencies: list[float] = []
    errors = [0]
    connector = aiohttp.TCPConnector(limit=spec["concurrency"])
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        budget = [spec["requests"]] if spec.get("requests") else None
        deadline = time.perf_counter() + spec.get("seconds", 0)
        started = time.perf_counter()
        await asyncio.gather(*(_worker(session, spec, body, latencies, errors, deadline, budget)
                               for _ in range(spec["concurrency"])))
        elapsed = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)
    return {"ops": n, "seconds": elapsed, "ops_per_s": n / elapsed if elapsed else 0.0,
            "p50_ms": latencies[n // 2] * 1000 if n else None,
            "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else None,
            "errors": errors[0]}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(json.loads(sys.argv[1])))))
