"""Service accounts: client id + secret (stored as an Argon2id hash), role and scopes.

Records live in the ``accounts`` LMDB database (see ``engine.lmdb_schema``); every change is
a WAL record (without the secret). Argon2id verification costs ~0.1 s of CPU: call
``authenticate`` from a worker thread, never on an event loop.

An unknown client id and a wrong secret are indistinguishable to the caller, in content
and in time: an unknown id is checked against a dummy hash.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time

import nacl.exceptions
import nacl.pwhash

from ..engine import durable
from ..engine import lmdb_schema as S
from ..engine import wal as W
from ..engine.errors import Conflict, NotFound, Unauthorized, ValidationError
from . import roles as R

log = logging.getLogger("artstored.auth")

ACTIVE, SUSPENDED, DELETED = "active", "suspended", "deleted"
INITIAL_ADMIN_FILE = "initial-admin.json"


def _hash_secret(secret: str) -> bytes:
    return nacl.pwhash.argon2id.str(secret.encode("utf-8"))


def _verify_secret(hashed: bytes, secret: str) -> bool:
    try:
        return nacl.pwhash.verify(hashed, secret.encode("utf-8"))
    except nacl.exceptions.InvalidkeyError:
        return False


def public_view(account: dict) -> dict:
    """An account as the API shows it: never the hash."""
    return {k: v for k, v in account.items() if k != "secret_hash"}


class AccountStore:
    def __init__(self, env: S.Env, *, secret_ttl_days: int = 90):
        self.env = env
        self.secret_ttl = secret_ttl_days * 86400
        self._dummy_hash = _hash_secret(secrets.token_urlsafe(32))

    def _db(self):
        return self.env.db(S.DB_ACCOUNTS)

    def get(self, client_id: str) -> dict:
        with self.env.read() as txn:
            raw = txn.get(client_id.encode("utf-8"), db=self._db())
        if raw is None:
            raise NotFound(f"no account {client_id!r}", code="account_not_found")
        return W.unpack(raw)

    def list(self) -> list[dict]:
        with self.env.read() as txn:
            return [W.unpack(v) for _, v in txn.cursor(db=self._db())]

    def has_admin(self) -> bool:
        return any(a["role"] == R.ADMIN and a["status"] == ACTIVE for a in self.list())

    def create(self, *, name: str, role: str, actor: W.Actor, scopes: list[str] | None = None,
               system: bool = False) -> tuple[dict, str]:
        """A new active account and its secret (shown once, never stored in the clear)."""
        if role not in R.ROLES:
            raise ValidationError(f"role must be one of {', '.join(R.ROLES)}",
                                  code="invalid_role")
        if not isinstance(name, str) or not 1 <= len(name) <= 64 or not name.isprintable():
            raise ValidationError("name must be 1-64 printable characters",
                                  code="invalid_name")
        unknown = sorted(set(scopes or ()) - set(R.SCOPES))
        if unknown:
            raise ValidationError(f"unknown scopes: {', '.join(unknown)}", code="invalid_scope")
        secret = secrets.token_urlsafe(32)
        now = time.time()
        account = {
            "client_id": "cl_" + secrets.token_hex(8),
            "name": name,
            "role": role,
            "scopes": R.grantable(role, scopes),
            "status": ACTIVE,
            "system": system,
            "created_at": now,
            "created_by": actor.id,
            "secret_created_at": now,
            "secret_expires_at": now + self.secret_ttl,
            "secret_hash": _hash_secret(secret),
        }
        with self.env.write() as txn:
            key = account["client_id"].encode()
            if not txn.put(key, W.pack(account), db=self._db(), overwrite=False):
                raise Conflict("client id collision; try again")
            W.append(txn, self.env, W.ACCOUNT_CREATE, actor,
                     data={"client_id": account["client_id"], "name": name, "role": role,
                           "scopes": account["scopes"], "system": system})
        log.info("account %s (%s, %s) created by %s", account["client_id"], name, role,
                 actor.id)
        return account, secret

    def authenticate(self, client_id: str, secret: str, *, now: float | None = None) -> dict:
        """The account if ``secret`` is its current secret and it may sign in; otherwise
        Unauthorized with code ``invalid_client`` (or ``secret_expired`` once the right
        secret has been proven)."""
        now = time.time() if now is None else now
        try:
            account = self.get(client_id) if client_id else None
        except NotFound:
            account = None
        if account is None:
            _verify_secret(self._dummy_hash, secret)
            raise Unauthorized("unknown client or wrong secret", code="invalid_client")
        if not _verify_secret(account["secret_hash"], secret):
            raise Unauthorized("unknown client or wrong secret", code="invalid_client")
        if account["status"] != ACTIVE:
            raise Unauthorized(f"account is {account['status']}", code="account_inactive")
        if account.get("secret_expires_at") and account["secret_expires_at"] <= now:
            raise Unauthorized("client secret has expired; rotate it",
                               code="secret_expired")
        return account

    def ensure_initial_admin(self, data_dir: str) -> str | None:
        """On a node with the admin role: if no active admin exists, create the system
        admin account and write its credentials to ``initial-admin.json`` (0600). Returns
        the file's path when it was written. The secret is never logged."""
        if self.has_admin():
            return None
        account, secret = self.create(name="admin", role=R.ADMIN, actor=W.SYSTEM, system=True)
        path = os.path.join(data_dir, INITIAL_ADMIN_FILE)
        body = {"client_id": account["client_id"], "client_secret": secret}
        durable.atomic_write(path, json.dumps(body, indent=2).encode() + b"\n", mode=0o600)
        os.chmod(path, 0o600)
        log.warning("initial admin account %s created; credentials in %s",
                    account["client_id"], path)
        return path
