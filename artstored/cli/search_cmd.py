"""``artstore search QUERY``: full-text search with filters."""

from __future__ import annotations

import urllib.parse

from .common import UsageError, add_remote_options, emit, make_client


def _line(item: dict) -> str:
    snippet = item.get("snippets", {}).get("description") or \
        item.get("snippets", {}).get("filename") or ""
    score = f"{item['score']:.2f}" if item.get("score") is not None else "-"
    text = f"{item['file_id']}  {score:>6}  {item['created_at'][:19]}  {item['original_filename']}"
    return text + (f"\n      {snippet}" if snippet else "")


def cmd_search(args) -> int:
    client = make_client(args)
    params = {"q": args.query or "", "limit": str(args.limit), "order": args.order}
    for name in ("created_from", "created_to", "content_type", "created_by", "size_min",
                 "size_max", "sort"):
        value = getattr(args, name)
        if value is not None:
            params[name] = str(value)
    for pair in args.attr or ():
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--attr takes KEY=VALUE, not {pair!r}")
        params[f"attr.{key}"] = value
    items, cursor, total = [], None, 0
    while True:
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        page = client.request("GET", "/api/v1/search?" + urllib.parse.urlencode(query))
        items.extend(page["items"])
        total = page["total_hits"]
        cursor = page["next_cursor"]
        if not args.all or not cursor:
            break
    emit(args, {"items": items, "next_cursor": cursor, "total_hits": total},
         lambda d: "\n".join([_line(i) for i in d["items"]]
                             + [f"({len(d['items'])} of {d['total_hits']} hits)"]))
    return 0


def register(sub) -> None:
    p = sub.add_parser("search", help="full-text search (Tantivy query syntax)")
    add_remote_options(p)
    p.add_argument("query", nargs="?", default="",
                   help='e.g. \'invoice AND attr.department:finance\'; empty: everything')
    p.add_argument("--created-from", dest="created_from", metavar="DATE",
                   help="created at or after (ISO 8601)")
    p.add_argument("--created-to", dest="created_to", metavar="DATE",
                   help="created before (ISO 8601)")
    p.add_argument("--content-type", dest="content_type", help="exact content type")
    p.add_argument("--created-by", dest="created_by", help="creator's client id or name")
    p.add_argument("--size-min", dest="size_min", type=int, help="at least this many bytes")
    p.add_argument("--size-max", dest="size_max", type=int, help="at most this many bytes")
    p.add_argument("--attr", action="append", metavar="KEY=VALUE",
                   help="exact custom attribute (repeatable)")
    p.add_argument("--sort", choices=("relevance", "created_at"),
                   help="relevance (default with a query) or created_at")
    p.add_argument("--order", choices=("desc", "asc"), default="desc",
                   help="for created_at: newest first (default) or oldest first")
    p.add_argument("--limit", type=int, default=20, help="hits per page (1-1000)")
    p.add_argument("--all", action="store_true", help="follow cursors to the end")
    p.set_defaults(func=cmd_search)
