"""``artstore job start|list|show|watch|cancel``: background jobs (verify, scrub, rebuild,
reindex, gc, export) on a daemon (operator). ``watch`` draws a progress bar on a terminal and
prints JSON lines with ``--json``; it ends when the job does, with the job's exit status
(0 succeeded, 1 otherwise)."""

from __future__ import annotations

import json
import sys
import time
import urllib.parse

from .common import add_remote_options, emit, make_client

KINDS = ("verify", "scrub", "rebuild", "reindex", "gc", "export")
FINISHED = ("succeeded", "failed", "cancelled")


def _size(n) -> str:
    n = float(n or 0)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _progress(job: dict) -> str:
    p = job["progress"]
    files = f"{p.get('done_files', 0)}/{p.get('total_files') or '?'} files"
    data = f"{_size(p.get('done_bytes'))}" + (f"/{_size(p['total_bytes'])}"
                                              if p.get("total_bytes") else "")
    rate = f"{_size(p.get('bytes_per_second'))}/s" if p.get("bytes_per_second") else ""
    eta = f"ETA {p['eta_seconds']:.0f} s" if p.get("eta_seconds") else ""
    return "  ".join(x for x in (files, data, rate, eta) if x)


def _line(job: dict) -> str:
    return f"{job['job_id']}  {job['kind']:<8} {job['state']:<11} {_progress(job)}"


def _show(job: dict) -> str:
    lines = [_line(job), f"started by {job['started_by']}"
             + (f", resumed {job['resumed']}×" if job.get("resumed") else "")]
    if job.get("error"):
        lines.append(f"error: {job['error']}")
    if job.get("report"):
        lines.append("report: " + json.dumps(job["report"], ensure_ascii=False, indent=2))
    return "\n".join(lines)


def cmd_start(args):
    body = {}
    if args.kind == "verify" and args.deep:
        body["deep"] = True
    if args.kind == "export":
        if not args.name:
            from .common import UsageError
            raise UsageError("export needs --name (the bag's directory under the daemon's "
                             "export.directory)")
        body["name"] = args.name
        if args.query:
            body["query"] = args.query
        if args.file_id:
            body["file_ids"] = args.file_id
        if args.organization:
            body["organization"] = args.organization
    if args.kind == "scrub":
        if args.rate is not None:
            body["rate_mb_per_s"] = args.rate
        if args.concurrency is not None:
            body["concurrency"] = args.concurrency
    job = make_client(args).request("POST", f"/api/v1/element/{args.kind}", json_body=body)
    emit(args, job, _line)
    if args.watch:
        return _watch(args, job["job_id"])
    return 0


def cmd_list(args):
    query = {"limit": str(args.limit)}
    if args.kind:
        query["kind"] = args.kind
    if args.state:
        query["state"] = args.state
    emit(args, make_client(args).request("GET", "/api/v1/jobs?" + urllib.parse.urlencode(query)),
         lambda d: "\n".join(_line(j) for j in d["items"]) or "no jobs")


def _path(job_id: str) -> str:
    return f"/api/v1/jobs/{urllib.parse.quote(job_id, safe='')}"


def cmd_show(args):
    emit(args, make_client(args).request("GET", _path(args.job_id)), _show)


def cmd_cancel(args):
    emit(args, make_client(args).request("DELETE", _path(args.job_id)), _line)


def _watch(args, job_id: str) -> int:
    client = make_client(args)
    bar = None
    try:
        while True:
            job = client.request("GET", _path(job_id))
            if args.json:
                print(json.dumps(job, ensure_ascii=False), flush=True)
            elif sys.stderr.isatty():
                from tqdm import tqdm
                p = job["progress"]
                total = p.get("total_bytes") or p.get("total_files")
                done = p.get("done_bytes") if p.get("total_bytes") else p.get("done_files")
                if bar is None:
                    bar = tqdm(total=total, desc=f"{job['kind']} {job_id[-8:]}",
                               file=sys.stderr, unit="B" if p.get("total_bytes") else "file",
                               unit_scale=bool(p.get("total_bytes")))
                bar.total = total
                bar.n = done or 0
                bar.refresh()
            if job["state"] in FINISHED:
                break
            time.sleep(args.interval)
    finally:
        if bar is not None:
            bar.close()
    if not args.json:
        print(_show(job))
    return 0 if job["state"] == "succeeded" else 1


def cmd_watch(args):
    return _watch(args, args.job_id)


def register(sub) -> None:
    p = sub.add_parser("job", help="background jobs: verify, scrub, rebuild, reindex, gc")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = actions.add_parser("start", help="start a job (operator)")
    add_remote_options(a)
    a.add_argument("kind", choices=KINDS)
    a.add_argument("--deep", action="store_true", help="verify: also re-hash every file")
    a.add_argument("--rate", type=float, metavar="MB_PER_S",
                   help="scrub: read at most this fast (default: scrub.rate_mb_per_s)")
    a.add_argument("--concurrency", type=int, help="scrub: files hashed at once")
    a.add_argument("--name", help="export: the bag's directory name on the daemon's host")
    a.add_argument("--query", help="export: the files a search query finds")
    a.add_argument("--file-id", action="append", help="export: this file (repeatable)")
    a.add_argument("--organization", help="export: Source-Organization in bag-info.txt")
    a.add_argument("--watch", action="store_true", help="then watch it until it ends")
    a.add_argument("--interval", type=float, default=1.0, help="watch: seconds between polls")
    a.set_defaults(func=cmd_start)

    a = actions.add_parser("list", help="jobs, newest first")
    add_remote_options(a)
    a.add_argument("--kind", choices=KINDS)
    a.add_argument("--state", help="queued, running, succeeded, failed, cancelled, "
                                   "interrupted, active or finished")
    a.add_argument("--limit", type=int, default=20)
    a.set_defaults(func=cmd_list)

    for name, func, text in (("show", cmd_show, "one job: progress, report, error"),
                             ("cancel", cmd_cancel, "cancel a queued or running job")):
        a = actions.add_parser(name, help=text)
        add_remote_options(a)
        a.add_argument("job_id")
        a.set_defaults(func=func)

    a = actions.add_parser("watch", help="follow a job until it ends (a progress bar on a "
                                         "terminal, JSON lines with --json)")
    add_remote_options(a)
    a.add_argument("job_id")
    a.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    a.set_defaults(func=cmd_watch)
