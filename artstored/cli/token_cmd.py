"""``artstore token``: get an access token (for scripts and curl)."""

from __future__ import annotations

from .common import add_remote_options, emit, make_client


def cmd_token(args) -> int:
    answer = make_client(args).fetch_token(args.scope)
    emit(args, answer, lambda a: a["access_token"])
    return 0


def register(sub) -> None:
    p = sub.add_parser("token", help="print an access token for the configured client")
    add_remote_options(p)
    p.add_argument("--scope", help="space-separated scopes to ask for (default: all granted)")
    p.set_defaults(func=cmd_token)
