"""``artstore export --bagit DIR``: write files as a BagIt bag (RFC 8493), offline.

Reads the data directory read-only (``ReadView.open``: a running daemon is no obstacle and
is never blocked). The selection: every file in the catalog (default), the hits of
``--query Q`` (Tantivy syntax, as ``artstore search``; evaluated on the search index the
daemon keeps in ``<data_dir>/index``, opened read-only, so files uploaded in the last second
may not be found yet), or ``--file-id ID`` (repeatable). See
``artstored.preservation.export`` for the bag's layout and rules. Exit 1 if the export
failed (a damaged file: the bag is not written), 2 for a bad destination or query.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Iterator

from ..engine.errors import BadRequest, NotFound
from ..engine.view import ReadView
from ..preservation import export as X
from .common import UsageError, emit, load_config
from .offline_cmd import add_offline_options

PAGE = 1000


def all_entries(view: ReadView) -> Iterator:
    """Every catalog entry in creation order, a page (one short read transaction) at a
    time."""
    cursor = None
    while True:
        entries, cursor = view.page(limit=PAGE, cursor=cursor, order="asc")
        yield from entries
        if cursor is None:
            return


def query_file_ids(index_dir: str, query: str) -> list[str]:
    """The ids of every hit of ``query`` in creation order, from the index at ``index_dir``
    opened read-only. UsageError if there is no index or the query is malformed."""
    from ..index.reader import open_reader
    from ..index.search import CREATED_AT, ASC, SearchRequest, SearchService

    reader = open_reader(index_dir)
    if reader is None:
        raise UsageError(f"no search index at {index_dir} (the daemon builds it; offline: "
                         "artstore reindex); or select with --file-id")
    service = SearchService(reader)
    out, cursor = [], None
    try:
        while True:
            page = service.search(SearchRequest(q=query, sort=CREATED_AT, order=ASC,
                                                limit=PAGE, cursor=cursor))
            out.extend(hit.file_id for hit in page.hits)
            cursor = page.next_cursor
            if not cursor:
                return out
    except BadRequest as exc:
        raise UsageError(f"--query: {exc.detail}") from None


def _source(data_dir: str) -> str:
    try:
        with open(os.path.join(data_dir, X.NODE_JSON), encoding="utf-8") as f:
            node = json.load(f)
        return f"{node['node_id']} ({node.get('name') or 'unnamed'})"
    except (OSError, ValueError, KeyError, TypeError):
        return os.path.abspath(data_dir)


def _text(r: dict) -> str:
    lines = [f"bag written: {r['bag']}: {r['files']} files, {r['bytes']} bytes "
             f"(Payload-Oxum {r['payload_oxum']})"]
    if r["renamed"]:
        lines.append(f"renamed (name clash): {len(r['renamed'])}")
        lines += [f"  {x['file_id']}  {x['name']}" for x in r["renamed"][:20]]
    if r["skipped"]:
        lines.append(f"skipped: {len(r['skipped'])}")
        lines += [f"  {x['file_id']}  {x['reason']}" for x in r["skipped"][:20]]
    if r["metadata_from_catalog"]:
        lines.append(f"attr.json taken from the catalog (no sidecar on disk): "
                     f"{len(r['metadata_from_catalog'])}")
    return "\n".join(lines)


def cmd_export(args) -> int:
    if args.query is not None and args.file_ids:
        raise UsageError("--query and --file-id are alternatives: give one")
    dest = os.path.abspath(args.bagit)
    if os.path.lexists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise UsageError(f"{dest} exists and is not an empty directory: the bag is written "
                         "only into a new or empty directory (nothing is overwritten)")
    if not os.path.isdir(os.path.dirname(dest)):
        raise UsageError(f"{os.path.dirname(dest)}: no such directory")
    cfg = load_config(args)
    try:
        view = ReadView.open(cfg.data_dir, [os.path.abspath(d) for d in cfg["storage.disks"]]
                             or None)
    except NotFound:
        raise UsageError(f"{cfg.data_dir}: no ArtStore data directory (no store.lmdb)") \
            from None
    with view:
        if args.query is not None:
            items = query_file_ids(os.path.join(view.data_dir, "index"), args.query)
            selection = f"search query: {args.query}"
        elif args.file_ids:
            items = list(args.file_ids)
            selection = f"{len(items)} file ids given"
        else:
            items = all_entries(view)
            selection = "all files"
        extra = {"Source-Organization": args.organization} if args.organization else None
        report = X.export_bag(view, items, dest, source=_source(view.data_dir),
                              selection=selection, bag_info=extra)
    for item in report["skipped"]:
        print(f"artstore: skipped {item['file_id']}: {item['reason']}", file=sys.stderr)
    emit(args, report, _text)
    return 0


def register(sub) -> None:
    p = sub.add_parser("export", help="write files as a BagIt bag (RFC 8493), offline and "
                                      "read-only beside a running daemon")
    add_offline_options(p)
    p.add_argument("--bagit", required=True, metavar="DIR",
                   help="the bag to write: a new or empty directory")
    p.add_argument("--query", metavar="Q",
                   help="only the hits of this search query (Tantivy syntax, as artstore "
                        "search; read from the search index); default: every file")
    p.add_argument("--file-id", dest="file_ids", action="append", metavar="ID",
                   help="only this file (repeatable)")
    p.add_argument("--organization", metavar="NAME",
                   help="Source-Organization for bag-info.txt")
    p.set_defaults(func=cmd_export)
