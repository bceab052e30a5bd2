"""``artstore element`` (mode, capacity, counters) and ``artstore mode MODE``."""

from __future__ import annotations

from .common import add_remote_options, emit, make_client


def _element_text(e: dict) -> str:
    cap = e["capacity"]
    lines = [
        f"node      {e['node_id']} ({e['name']})",
        f"mode      {e['mode']} (since {e['mode_changed_at']}, by {e['mode_changed_by']})",
        f"capacity  {cap['status']}: {cap['free_bytes'] / 1e9:.1f} GB free of "
        f"{cap['total_bytes'] / 1e9:.1f} GB",
        f"files     {e['files']} ({e['bytes_stored']} bytes)",
        f"wal       seq {e['wal_seq']}, {e['pending_intents']} pending",
    ]
    for d in cap["disks"]:
        lines.append(f"disk      {d['disk_id']} {d['path']} {d['status']} "
                     f"{d['free_bytes'] / 1e9:.1f} GB free")
    return "\n".join(lines)


def cmd_element(args) -> int:
    emit(args, make_client(args).request("GET", "/api/v1/element"), _element_text)
    return 0


def cmd_mode(args) -> int:
    element = make_client(args).request("PUT", "/api/v1/element/mode",
                                        json_body={"mode": args.mode, "confirm": args.confirm})
    emit(args, element, lambda e: f"mode is now {e['mode']}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("element", help="show this storage element: mode, capacity, counters")
    add_remote_options(p)
    p.set_defaults(func=cmd_element)

    p = sub.add_parser("mode", help="change the element's mode (admin)")
    add_remote_options(p)
    p.add_argument("mode", choices=("rw", "ro", "ar"))
    p.add_argument("--confirm", action="store_true",
                   help="needed for ro -> rw, which re-opens the element for writes")
    p.set_defaults(func=cmd_mode)
