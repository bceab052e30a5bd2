"""``artstore audit verify|export|ls``: the tamper-evident audit trail.

``verify`` and ``export`` work offline on a data directory (``--data-dir``; read-only, so a
running daemon is no obstacle) or through the API."""

from __future__ import annotations

import sys
import urllib.parse

from .. import audit
from ..engine.errors import NotFound
from ..engine.view import ReadView
from ..index.search import parse_time_param
from .common import UsageError, add_remote_options, emit, load_config, make_client

FILTERS = ("actor", "kind", "file_id")


def _view(args) -> ReadView:
    cfg = load_config(args)
    try:
        return ReadView.open(cfg.data_dir)
    except NotFound:
        raise UsageError(f"{cfg.data_dir}: no store.lmdb here") from None


def _filters(args) -> dict:
    out = {k: getattr(args, k) for k in FILTERS if getattr(args, k)}
    if args.since:
        out["since"] = parse_time_param("--from", args.since)
    if args.until:
        out["until"] = parse_time_param("--to", args.until)
    return out


def _query(args) -> dict:
    q = {k: getattr(args, k) for k in FILTERS if getattr(args, k)}
    if args.since:
        q["from"] = args.since
    if args.until:
        q["to"] = args.until
    return q


def cmd_verify(args) -> int:
    if args.data_dir:
        with _view(args) as view:
            result = audit.verify(view)
    else:
        result = make_client(args).request("GET", "/api/v1/audit/verify")
    emit(args, result, lambda r: f"audit trail intact: {r['records']} records, head {r['head']}"
         if r["ok"] else f"audit trail BROKEN at record {r['broken_seq']} "
                         f"({r['records']} records)")
    return 0 if result["ok"] else 1


def cmd_export(args) -> int:
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        if args.data_dir:
            with _view(args) as view:
                n = audit.export(view, out, **_filters(args))
        else:
            import json
            client, cursor, n = make_client(args), None, 0
            while True:
                q = dict(_query(args), order="asc", limit="1000",
                         **({"cursor": cursor} if cursor else {}))
                page = client.request("GET", "/api/v1/audit?" + urllib.parse.urlencode(q))
                for item in page["items"]:
                    out.write(json.dumps(item, ensure_ascii=False) + "\n")
                    n += 1
                cursor = page["next_cursor"]
                if not cursor:
                    break
    finally:
        if args.output:
            out.close()
    print(f"{n} events", file=sys.stderr)
    return 0


def cmd_ls(args) -> int:
    q = dict(_query(args), limit=str(args.limit))
    page = make_client(args).request("GET", "/api/v1/audit?" + urllib.parse.urlencode(q))
    emit(args, page, lambda d: "\n".join(
        f"{e['seq']:>8}  {e['time'][:19]}  {e['kind']:<16} {e['state']:<11} "
        f"{e['actor'].get('id')}  {e.get('file_id') or ''}" for e in d["items"]))
    return 0


def _filter_options(p) -> None:
    p.add_argument("--actor", help="client id or name of who did it")
    p.add_argument("--kind", help="exact, or a prefix ending in a dot (file.)")
    p.add_argument("--file-id", dest="file_id", help="events of this file")
    p.add_argument("--from", dest="since", metavar="TIME", help="at or after (ISO 8601)")
    p.add_argument("--to", dest="until", metavar="TIME", help="before (ISO 8601)")


def register(sub) -> None:
    p = sub.add_parser("audit", help="the tamper-evident audit trail")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("verify", help="check the hash chain; names the first broken record")
    add_remote_options(a)
    a.add_argument("--data-dir", help="check this data directory offline")
    a.set_defaults(func=cmd_verify)
    a = actions.add_parser("export", help="write events as JSON lines, oldest first")
    add_remote_options(a)
    a.add_argument("--data-dir", help="read this data directory offline")
    a.add_argument("-o", "--output", help="file to write (default: stdout)")
    _filter_options(a)
    a.set_defaults(func=cmd_export)
    a = actions.add_parser("ls", help="list recent events")
    add_remote_options(a)
    a.add_argument("--limit", type=int, default=50, help="events to show (1-1000)")
    _filter_options(a)
    a.set_defaults(func=cmd_ls)
