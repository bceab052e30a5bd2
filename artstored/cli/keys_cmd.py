"""``artstore keys list|rotate``: the token signing keys (admin)."""

from __future__ import annotations

from .common import add_remote_options, emit, make_client


def _text(d: dict) -> str:
    return "\n".join(f"{k['kid']}  {'active' if k['active'] else 'retired'}"
                     + (f"  verifies until {k['verify_until']:.0f}" if k.get("verify_until")
                        else "") for k in d["items"])


def cmd_list(args):
    emit(args, make_client(args).request("GET", "/api/v1/auth/keys"), _text)


def cmd_rotate(args):
    body = {} if args.grace is None else {"grace_seconds": args.grace}
    emit(args, make_client(args).request("POST", "/api/v1/auth/keys/rotate", json_body=body),
         lambda d: f"new signing key {d['active']}\n{_text(d)}")


def register(sub) -> None:
    p = sub.add_parser("keys", help="token signing keys (admin)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("list", help="list signing keys")
    add_remote_options(a)
    a.set_defaults(func=cmd_list)
    a = actions.add_parser("rotate", help="make a new signing key; the old one keeps "
                                          "verifying through a grace period")
    add_remote_options(a)
    a.add_argument("--grace", type=float, metavar="SECONDS",
                   help="how long the old key verifies (default: token lifetime + 60 s)")
    a.set_defaults(func=cmd_rotate)
