"""The S3 endpoint's goals (issue 17), measured in one run on one fresh filesystem:

- PUT and GET of 4 KiB, 1 MiB and 1 GiB through ArtStore's S3 endpoint ÷ the same through
  its native API: goal >= 0.9;
- ÷ OpenStack Swift's S3 front (``s3api`` over Swift's proxy, account, container and object
  servers; ``bench.swift_s3``) on the same disk: goal >= 1.5.

Requests come from ``bench.loadgen`` in its own process. S3 requests are presigned URLs
(Signature Version 4 in the query, payload unsigned) made before the clock starts, so no
signing is timed for either S3 server; native requests carry a bearer token. The three
servers take turns size by size (order rotated), each PUTs its own objects, then GETs
them, cycling through them for ``GET_SECONDS`` (5 s; quick 1 s).

    python -m bench.s3 [--quick]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import sys
import time

import boto3
from botocore.config import Config

from .common import Server, free_port, fresh_filesystem
from .suite import label, loadgen
from .swift_s3 import ACCESS_KEY, SECRET_KEY, SwiftS3, available

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
GOAL_NATIVE, GOAL_SWIFT = 0.9, 1.5
# size → (concurrency, requests)
FULL = {4 * KIB: (16, 2000), MIB: (16, 400), GIB: (1, 2)}
QUICK = {4 * KIB: (16, 200), MIB: (16, 40), 64 * MIB: (1, 1)}
# GETs cycle through the objects just PUT for this long: 400 GETs of 1 MiB took ~0.45 s,
# too short a window on this machine (the S3 ÷ native ratio of the same code path swung
# from 0.73 to 0.96 between runs).
GET_SECONDS, QUICK_GET_SECONDS = 5.0, 1.0
SERVERS = ("native", "artstore-s3", "swift-s3")


def _client(url: str, access: str, secret: str):
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=access, aws_secret_access_key=secret,
                        config=Config(signature_version="s3v4", retries={"max_attempts": 2}))


def _s3_key(store: Server) -> dict:
    with open(os.path.join(store.data_dir, "initial-admin.json")) as f:
        client_id = json.load(f)["client_id"]
    conn = http.client.HTTPConnection("127.0.0.1", store.port)
    conn.request("POST", f"/api/v1/accounts/{client_id}/s3-keys",
                 headers={"Authorization": f"Bearer {store.token}"})
    answer = conn.getresponse()
    body = json.loads(answer.read())
    conn.close()
    if answer.status != 201:
        raise RuntimeError(f"cannot make an S3 key: {body}")
    return body


def _presigned(s3, method: str, bucket: str, keys: list[str]) -> list[str]:
    """Path and query of each presigned URL (the load generator adds the base)."""
    operation = "put_object" if method == "PUT" else "get_object"
    out = []
    for key in keys:
        url = s3.generate_presigned_url(operation, ExpiresIn=3600,
                                        Params={"Bucket": bucket, "Key": key})
        out.append("/" + url.split("/", 3)[3])
    return out


def _native(store: Server, size: int, conc: int, count: int,
            get_seconds: float) -> tuple[dict, dict]:
    base = f"http://127.0.0.1:{store.port}"
    boundary = "b-" + secrets.token_hex(8)
    put = loadgen({
        "base": base, "method": "POST", "path": "/api/v1/files", "collect": "file_id",
        "concurrency": conc, "requests": count, "body_size": size,
        "body_prefix": f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                       f"filename=\"o.bin\"\r\n\r\n",
        "body_suffix": f"\r\n--{boundary}--\r\n",
        "headers": {"Authorization": f"Bearer {store.token}",
                    "Content-Type": f"multipart/form-data; boundary={boundary}"}})
    get = loadgen({"base": base, "method": "GET", "concurrency": conc, "seconds": get_seconds,
                   "paths": [f"/api/v1/files/{i}/download" for i in put["collected"]],
                   "headers": {"Authorization": f"Bearer {store.token}"}})
    return put, get


def _over_s3(s3, base: str, size: int, conc: int, count: int,
             get_seconds: float) -> tuple[dict, dict]:
    keys = [f"{label(size).replace(' ', '')}/{secrets.token_hex(4)}-{n}" for n in range(count)]
    put = loadgen({"base": base, "method": "PUT", "concurrency": conc, "requests": count,
                   "body_size": size, "paths": _presigned(s3, "PUT", "bench", keys),
                   "headers": {"Content-Type": "application/octet-stream"}})
    get = loadgen({"base": base, "method": "GET", "concurrency": conc, "seconds": get_seconds,
                   "paths": _presigned(s3, "GET", "bench", keys)})
    return put, get


def run(work: str, *, quick: bool = False) -> dict:
    sizes = QUICK if quick else FULL
    get_seconds = QUICK_GET_SECONDS if quick else GET_SECONDS
    if not available():
        return {"error": "Swift's S3 stack is not installed (swift-proxy, swift-account, "
                         "swift-container, swift-object, memcached)"}
    biggest = max(sizes)
    room = 3 * sum(size * count for size, (_, count) in sizes.items()) + (2 << 30)
    rows = []
    with fresh_filesystem(work, max(4 << 30, room)) as (fs, kind):
        s3_port = free_port()
        store = Server.artstored(os.path.join(fs, "artstore"), free_port(),
                                 env={"ARTSTORE_S3_LISTEN": f"127.0.0.1:{s3_port}",
                                      "ARTSTORE_LIMITS_MAX_UPLOAD_BYTES": str(2 * biggest)})
        swift = None
        try:
            swift = SwiftS3.start(os.path.join(fs, "swift"))
            key = _s3_key(store)
            ours = _client(f"http://127.0.0.1:{s3_port}", key["access_key_id"],
                           key["secret_access_key"])
            theirs = _client(swift.url, ACCESS_KEY, SECRET_KEY)
            for client in (ours, theirs):
                client.create_bucket(Bucket="bench")
            for turn, (size, (conc, count)) in enumerate(sizes.items()):
                order = SERVERS[turn % 3:] + SERVERS[:turn % 3]
                for server in order:
                    if server == "native":
                        put, get = _native(store, size, conc, count, get_seconds)
                    elif server == "artstore-s3":
                        put, get = _over_s3(ours, f"http://127.0.0.1:{s3_port}", size, conc,
                                            count, get_seconds)
                    else:
                        put, get = _over_s3(theirs, swift.url, size, conc, count,
                                            get_seconds)
                    for op, res in (("PUT", put), ("GET", get)):
                        rows.append({"server": server, "op": op, "size": label(size),
                                     "concurrency": conc, "ops": res["ops"],
                                     "ops_per_s": res["ops_per_s"],
                                     "MB_per_s": res["bytes_per_s"] / 1e6,
                                     "p50_ms": res["p50_ms"], "p99_ms": res["p99_ms"],
                                     "errors": res["errors"],
                                     "first_error": res["first_error"]})
        finally:
            if swift is not None:
                swift.stop()
            store.stop()
    return {"filesystem": kind, "rows": rows, "goals": goals(rows)}


def goals(rows: list[dict]) -> list[dict]:
    by = {(r["server"], r["op"], r["size"]): r for r in rows}
    out = []
    for (server, op, size), row in by.items():
        if server != "artstore-s3":
            continue
        for ref, goal in (("native", GOAL_NATIVE), ("swift-s3", GOAL_SWIFT)):
            other = by.get((ref, op, size))
            if other is None or not other["ops_per_s"]:
                continue
            ratio = row["ops_per_s"] / other["ops_per_s"]
            out.append({"what": f"S3 {op} {size} ÷ {ref}", "ratio": ratio, "goal": goal,
                        "meets": ratio >= goal})
    return out


def failed(res: dict) -> list[str]:
    """Why this run cannot be trusted (a missing reference, failed requests)."""
    if "error" in res:
        return [res["error"]]
    return [f"{r['server']} {r['op']} {r['size']}: {r['errors']} failed "
            f"({r['first_error']})" for r in res["rows"] if r["errors"]]


def report(res: dict) -> str:
    if "error" in res:
        return f"  cannot run: {res['error']}"
    lines = [f"  on {res['filesystem']}",
             f"  {'server':<12} {'op':<4} {'size':>7} {'conc':>4} {'ops/s':>9} {'MB/s':>8} "
             f"{'p50 ms':>8} {'p99 ms':>8}"]
    for r in res["rows"]:
        lines.append(f"  {r['server']:<12} {r['op']:<4} {r['size']:>7} {r['concurrency']:>4} "
                     f"{r['ops_per_s']:>9.1f} {r['MB_per_s']:>8.1f} {r['p50_ms']:>8.1f} "
                     f"{r['p99_ms']:>8.1f}" + (f"  {r['errors']} failed" if r["errors"]
                                               else ""))
    for g in res["goals"]:
        lines.append(f"  {g['what']:<28} {g['ratio']:5.2f}x  goal >= {g['goal']}: "
                     f"{'meets' if g['meets'] else 'BELOW goal'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.s3", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: checks it runs")
    p.add_argument("--work", default=os.path.join(os.path.dirname(__file__), "work", "s3"))
    args = p.parse_args(argv)
    started = time.monotonic()
    res = run(args.work, quick=args.quick)
    print(report(res))
    print(f"  ({time.monotonic() - started:.0f} s)")
    problems = failed(res)
    for problem in problems:
        print(f"  FAILED: {problem}", file=sys.stderr)
    shutil.rmtree(args.work, ignore_errors=True)
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
