"""``artstore mount [--data-dir DIR] MOUNTPOINT``: the read-only FUSE view, in the foreground."""

from __future__ import annotations

import os

from .. import logs
from .common import UsageError, load_config


def cmd_mount(args) -> int:
    from ..fuse.mount import run

    cfg = load_config(args)
    if not os.path.isdir(args.mountpoint):
        raise UsageError(f"{args.mountpoint}: not a directory")
    if not os.path.isdir(os.path.join(cfg.data_dir, "store.lmdb")):
        raise UsageError(f"{cfg.data_dir}: no ArtStore data directory (no store.lmdb)")
    logs.setup(cfg["log.level"])
    return run(cfg.data_dir, args.mountpoint,
               disk_roots=[os.path.abspath(d) for d in cfg["storage.disks"]] or None,
               debug=args.debug, metrics_file=args.metrics_file)


def register(sub) -> None:
    p = sub.add_parser("mount", help="mount the archive read-only (FUSE), in the foreground")
    p.add_argument("mountpoint")
    p.add_argument("--data-dir", help="data directory (default: from the config)")
    p.add_argument("--config", help="config file (for the data directory and disk roots)")
    p.add_argument("--debug", action="store_true", help="log every FUSE request")
    p.add_argument("--metrics-file", metavar="FILE",
                   help="write the mount's metrics (operations, bytes, errors) here every "
                        "10 s in Prometheus text format, for node_exporter's textfile collector")
    p.set_defaults(func=cmd_mount)
