"""``artstore account create|list|show|suspend|reactivate|role|rotate-secret|revoke-tokens|
delete|s3-key``: service accounts (admin). A new secret is printed once, and only to
stdout."""

from __future__ import annotations

import json
import urllib.parse

from .common import add_remote_options, emit, make_client


def _path(client_id: str, tail: str = "") -> str:
    return f"/api/v1/accounts/{urllib.parse.quote(client_id)}{tail}"


def _line(a: dict) -> str:
    return f"{a['client_id']}  {a['status']:<9}  {a['role']:<8}  {a['name']}"


def _secret_text(a: dict) -> str:
    return (f"{_line(a)}\nclient_secret: {a['client_secret']}\n"
            "(shown once: store it now)")


def cmd_create(args):
    body = {"name": args.name, "role": args.role}
    if args.scope:
        body["scopes"] = args.scope
    emit(args, make_client(args).request("POST", "/api/v1/accounts", json_body=body),
         _secret_text)


def cmd_list(args):
    path = "/api/v1/accounts" + ("?include_deleted=1" if args.all else "")
    emit(args, make_client(args).request("GET", path),
         lambda d: "\n".join(_line(a) for a in d["items"]))


def cmd_show(args):
    emit(args, make_client(args).request("GET", _path(args.client_id)),
         lambda a: "\n".join(f"{k}: {v}" for k, v in a.items()))


def _status(status):
    def run(args):
        emit(args, make_client(args).request("PATCH", _path(args.client_id),
                                             json_body={"status": status}), _line)
    return run


def cmd_role(args):
    body = {"role": args.role}
    if args.scope:
        body["scopes"] = args.scope
    emit(args, make_client(args).request("PATCH", _path(args.client_id), json_body=body),
         _line)


def cmd_rotate(args):
    if args.data_dir:
        return _rotate_offline(args)
    emit(args, make_client(args).request("POST", _path(args.client_id, "/rotate-secret"),
                                         json_body={"grace_seconds": args.grace}),
         _secret_text)


def _rotate_offline(args):
    """On the host, with the daemon stopped: a new secret straight into the store (the way
    back in when an admin's secret has expired, or its holder is gone). Only for whoever
    owns the data directory (root, or the service user), never over the network."""
    import os

    from ..auth.accounts import INITIAL_ADMIN_FILE, AccountStore, public_view
    from ..engine import durable
    from ..engine.wal import Actor
    from .common import UsageError, load_config
    from .offline_cmd import open_store

    cfg = load_config(args)
    data_dir = os.path.abspath(cfg.data_dir)
    owner = os.stat(data_dir).st_uid if os.path.isdir(data_dir) else None
    if os.geteuid() not in (0, owner):
        raise UsageError(f"only root or the owner of {data_dir} may rotate a secret offline")
    with open_store(args) as store:
        accounts = AccountStore(store.env, secret_ttl_days=cfg["auth.secret_ttl_days"])
        actor = Actor(f"local:uid{os.geteuid()}", "offline rotate-secret", "admin")
        account, secret = accounts.rotate_secret(args.client_id, actor, grace_seconds=args.grace)
    credentials = os.path.join(data_dir, INITIAL_ADMIN_FILE)
    if account.get("system") and os.path.exists(credentials):
        body = {"client_id": account["client_id"], "client_secret": secret}
        durable.atomic_write(credentials, json.dumps(body, indent=2).encode() + b"\n",
                             mode=0o600)
    emit(args, {**public_view(account), "client_secret": secret}, _secret_text)
    return 0


def cmd_revoke(args):
    emit(args, make_client(args).request("POST", _path(args.client_id, "/revoke-tokens")),
         lambda a: f"all tokens of {a['client_id']} revoked")


def cmd_delete(args):
    emit(args, make_client(args).request("DELETE", _path(args.client_id)), _line)


def _key_line(k: dict) -> str:
    return f"{k['access_key_id']}  {k['status']:<8}  {k['client_id']}"


def cmd_s3_key(args):
    client = make_client(args)
    if args.key_action == "create":
        emit(args, client.request("POST", _path(args.client_id, "/s3-keys")),
             lambda k: f"{_key_line(k)}\naws_access_key_id: {k['access_key_id']}\n"
                       f"aws_secret_access_key: {k['secret_access_key']}\n"
                       "(shown once: store it now)")
    elif args.key_action == "list":
        emit(args, client.request("GET", _path(args.client_id, "/s3-keys")),
             lambda d: "\n".join(_key_line(k) for k in d["items"]))
    else:
        tail = f"/s3-keys/{urllib.parse.quote(args.access_key_id)}"
        emit(args, client.request("DELETE", _path(args.client_id, tail)), _key_line)


def register(sub) -> None:
    p = sub.add_parser("account", help="service accounts (admin)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = actions.add_parser("create", help="create an account; prints its secret once")
    add_remote_options(a)
    a.add_argument("name")
    a.add_argument("--role", choices=("user", "operator", "admin"), default="user",
                   help="user (default), operator or admin")
    a.add_argument("--scope", action="append", help="limit to these scopes (repeatable)")
    a.set_defaults(func=cmd_create)

    a = actions.add_parser("list", help="list accounts")
    add_remote_options(a)
    a.add_argument("--all", action="store_true", help="include deleted accounts")
    a.set_defaults(func=cmd_list)

    for name, func, text in (("show", cmd_show, "show an account"),
                             ("suspend", _status("suspended"), "suspend (tokens stop working)"),
                             ("reactivate", _status("active"), "reactivate a suspended account"),
                             ("revoke-tokens", cmd_revoke, "revoke every token of an account"),
                             ("delete", cmd_delete, "delete (the id is never reused)")):
        a = actions.add_parser(name, help=text)
        add_remote_options(a)
        a.add_argument("client_id")
        a.set_defaults(func=func)

    a = actions.add_parser("role", help="change an account's role and scopes")
    add_remote_options(a)
    a.add_argument("client_id")
    a.add_argument("role", choices=("user", "operator", "admin"))
    a.add_argument("--scope", action="append", help="limit to these scopes (repeatable)")
    a.set_defaults(func=cmd_role)

    a = actions.add_parser("rotate-secret", help="new secret (printed once)")
    add_remote_options(a)
    a.add_argument("client_id")
    a.add_argument("--grace", type=float, default=0, metavar="SECONDS",
                   help="keep the old secret working this long (default 0)")
    a.add_argument("--data-dir", metavar="DIR",
                   help="offline, on the host, with the daemon stopped: rotate directly in "
                        "DIR (root or the directory's owner only; renews even an expired "
                        "system admin secret, and rewrites initial-admin.json if present)")
    a.add_argument("--config", help="config file (with --data-dir: for the data directory)")
    a.set_defaults(func=cmd_rotate)

    a = actions.add_parser("s3-key", help="S3 access keys of an account (create prints the "
                                          "secret once; list; revoke)")
    keys = a.add_subparsers(dest="key_action", metavar="KEY_ACTION", required=True)
    for name, text in (("create", "a new access key and secret (printed once)"),
                       ("list", "the account's access keys (never a secret)"),
                       ("revoke", "revoke an access key for good")):
        k = keys.add_parser(name, help=text)
        add_remote_options(k)
        k.add_argument("client_id")
        if name == "revoke":
            k.add_argument("access_key_id")
        k.set_defaults(func=cmd_s3_key)
