"""Offline commands on a data directory (the daemon must be stopped): ``artstore rebuild``."""

from __future__ import annotations

from ..daemon import store_config
from ..engine.rebuild import rebuild_catalog
from ..engine.store import Store
from .common import add_json_option, emit, load_config


def open_store(args) -> Store:
    return Store(store_config(load_config(args)))


def _rebuild_text(r: dict) -> str:
    lines = [f"catalog rebuilt: {r['files']} files, {r['bytes']} bytes"]
    for key in ("missing_data", "size_mismatch", "checksum_mismatch", "unreadable",
                "orphan_data"):
        if r[key]:
            lines.append(f"{key.replace('_', ' ')}: {len(r[key])}")
            lines.extend(f"  {item}" for item in r[key][:20])
    return "\n".join(lines)


def cmd_rebuild(args) -> int:
    with open_store(args) as store:
        report = rebuild_catalog(store, verify=args.verify)
    emit(args, report, _rebuild_text)
    return 0


def cmd_reindex(args) -> int:
    import os

    from ..index.follower import IndexFollower

    with open_store(args) as store:
        follower = IndexFollower(store, os.path.join(store.data_dir, "index"))
        try:
            report = follower.reindex()
        finally:
            follower.stop()
    emit(args, report, lambda r: f"index rebuilt: {r['files']} files in {r['seconds']} s")
    return 0


def add_offline_options(parser) -> None:
    add_json_option(parser)
    parser.add_argument("--data-dir", help="data directory (default: from the config)")
    parser.add_argument("--config", help="config file (for disk roots)")


def register(sub) -> None:
    p = sub.add_parser("rebuild", help="rebuild the catalog from the attr.json files (offline)")
    add_offline_options(p)
    p.add_argument("--verify", action="store_true",
                   help="also re-hash every file and leave out those that do not match")
    p.set_defaults(func=cmd_rebuild)

    p = sub.add_parser("reindex", help="rebuild the search index from the catalog (offline)")
    add_offline_options(p)
    p.set_defaults(func=cmd_reindex)
