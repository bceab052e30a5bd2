"""``artstore cluster status|join|leave|mode``: the cluster as a node sees it, and the
admin's roster and mode changes (join, leave and mode go to the admin node)."""

from __future__ import annotations

from .common import add_remote_options, emit, make_client


def _ago(seconds) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


def _status_text(c: dict) -> str:
    if not c["enabled"]:
        return f"node      {c['node_id']}: single node (no [cluster] configuration)"
    doc = c.get("document") or {}
    lines = [f"node      {c['node_id']} ({c['role']}, {c['state']}"
             f"{', authority' if c.get('authority') else ''}) at {c['address']}",
             f"document  v{doc.get('version', '-')} signed by {doc.get('signer', '-')}, "
             f"replication factor {doc.get('replication_factor', '-')}"]
    lines.append(f"{'MEMBER':<20} {'ROLE':<7} {'STATE':<8} {'INCARNATION':>11} "
                 f"{'DOC':>5} {'LAG':>4} {'HEARD':>7}  ADDRESS")
    for m in c["members"]:
        inc = "-" if m["incarnation"] is None else str(m["incarnation"])
        held = "-" if m["document_version"] is None else str(m["document_version"])
        lag = "-" if m["document_lag"] is None else str(m["document_lag"])
        lines.append(f"{m['node_id']:<20} {m['role']:<7} {m['state']:<8} {inc:>11} "
                     f"{held:>5} {lag:>4} {_ago(m['last_heard_seconds_ago']):>7}  "
                     f"{m['address']}")
    for r in c.get("join_requests") or []:
        lines.append(f"join request: {r['node_id']} ({r['name']}) at {r['address']} — "
                     f"admit with: artstore cluster join {r['node_id']}")
    rep = c.get("replication") or {}
    last = (rep.get("anti_entropy") or {}).get("last_full_pass")
    if rep:
        lines.append(f"replication pushed {rep.get('pushed', 0)}, pulled {rep.get('pulled', 0)}, "
                     f"failures {rep.get('push_failures', 0)}+{rep.get('pull_failures', 0)}; "
                     + (f"last anti-entropy pass: {last['files']} files, "
                        f"{last['missing_copies']} copies missing, {last['pushed']} pushed"
                        if last else "no anti-entropy pass yet"))
    if c.get("refused"):
        lines.append("refused   " + ", ".join(f"{k} {v}" for k, v in sorted(c["refused"].items())))
    return "\n".join(lines)


def cmd_status(args) -> int:
    emit(args, make_client(args).request("GET", "/api/v1/cluster"), _status_text)
    return 0


def cmd_join(args) -> int:
    status = make_client(args).request("PUT", f"/api/v1/cluster/members/{args.node_id}")
    emit(args, status, lambda c: f"{args.node_id} is on the roster "
                                 f"(document v{c['document']['version']})")
    return 0


def cmd_leave(args) -> int:
    status = make_client(args).request("DELETE", f"/api/v1/cluster/members/{args.node_id}")
    emit(args, status, lambda c: f"{args.node_id} is off the roster "
                                 f"(document v{c['document']['version']})")
    return 0


def cmd_mode(args) -> int:
    status = make_client(args).request("PUT", f"/api/v1/cluster/members/{args.node_id}/mode",
                                       json_body={"mode": args.mode})
    emit(args, status, lambda c: f"mode {args.mode} for {args.node_id} is in document "
                                 f"v{c['document']['version']}; the element applies it")
    return 0


def cmd_repair(args) -> int:
    body = {"file_ids": args.file_ids} if args.file_ids else None
    answer = make_client(args).request("POST", "/api/v1/cluster/repair", json_body=body)
    emit(args, answer, lambda a: "anti-entropy pass queued"
         + (f" for {a['file_ids']} files" if a["file_ids"] else ""))
    return 0


def register(sub) -> None:
    p = sub.add_parser("cluster", help="the cluster: members, roster, modes")
    csub = p.add_subparsers(dest="cluster_command", required=True)
    s = csub.add_parser("status", help="members, states, incarnations, document versions")
    add_remote_options(s)
    s.set_defaults(func=cmd_status)
    for name, func, text in (("join", cmd_join, "put a node that asked to join on the roster "
                                                "(admin node)"),
                             ("leave", cmd_leave, "take a node off the roster (admin node)")):
        s = csub.add_parser(name, help=text)
        add_remote_options(s)
        s.add_argument("node_id", help="n- and 16 hex digits, as `cluster status` shows")
        s.set_defaults(func=func)
    s = csub.add_parser("repair", help="check now that every owner of the files held here "
                                       "has them, and give them the ones they lack")
    add_remote_options(s)
    s.add_argument("file_ids", nargs="*", help="only these files (default: all held here)")
    s.set_defaults(func=cmd_repair)
    s = csub.add_parser("mode", help="set a member's mode (admin node); the element applies "
                                     "and records it")
    add_remote_options(s)
    s.add_argument("node_id")
    s.add_argument("mode", choices=("rw", "ro", "ar"))
    s.set_defaults(func=cmd_mode)
