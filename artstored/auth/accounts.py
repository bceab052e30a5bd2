"""Service accounts: client id + secret (stored as an Argon2id hash), role and scopes.

Records live in the ``accounts`` LMDB database (see ``engine.lmdb_schema``); every change is
a WAL record (never with a secret). Argon2id verification costs ~0.1 s of CPU: call
``authenticate`` from a worker thread, never on an event loop.

Lifecycle: ``active`` ⇄ ``suspended``; either → ``deleted`` (soft: the record stays and its
client id is never given out again). A system account (the initial admin) can be neither
suspended nor deleted. A secret expires (``secret_expires_at``); rotating it makes a new one
(shown once) and keeps the old one working only through an optional grace period. Tokens
can be revoked one by one (``jti``) or all at once for an account: each token carries the
account's ``token_generation`` (claim ``gen``), and revoking all, suspending, deleting or
changing the role moves the generation on.

An unknown client id and a wrong secret are indistinguishable to the caller, in content
and in time: an unknown id is checked against a dummy hash.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time

import nacl.exceptions
import nacl.pwhash

from ..engine import durable
from ..engine import lmdb_schema as S
from ..engine import wal as W
from ..engine.errors import Conflict, Forbidden, NotFound, Unauthorized, ValidationError
from . import roles as R

log = logging.getLogger("artstored.auth")

ACTIVE, SUSPENDED, DELETED = "active", "suspended", "deleted"
STATUS_TRANSITIONS = {ACTIVE: (SUSPENDED, DELETED), SUSPENDED: (ACTIVE, DELETED),
                      DELETED: ()}
INITIAL_ADMIN_FILE = "initial-admin.json"
MAX_GRACE_SECONDS = 7 * 86400
_SEEN_MAX = 10_000   # entries of each token_allowed map before it is emptied


def _hash_secret(secret: str) -> bytes:
    return nacl.pwhash.argon2id.str(secret.encode("utf-8"))


def _verify_secret(hashed: bytes | None, secret: str) -> bool:
    if not hashed:
        return False
    try:
        return nacl.pwhash.verify(hashed, secret.encode("utf-8"))
    except nacl.exceptions.InvalidkeyError:
        return False


def public_view(account: dict) -> dict:
    """An account as the API shows it: never a hash."""
    return {k: v for k, v in account.items() if not k.endswith("secret_hash")}


class AccountStore:
    def __init__(self, env: S.Env, *, secret_ttl_days: int = 90):
        self.env = env
        self.secret_ttl = secret_ttl_days * 86400
        self._dummy_hash = _hash_secret(secrets.token_urlsafe(32))
        # Called (on the writing thread, after the commit) whenever an account or a
        # revocation changed: a cluster admin re-signs its document at once. Must be quick.
        self.change_listeners: list = []
        # token_allowed's answers (sub -> (status, generation), jti -> revoked), read on
        # every authenticated request. Emptied by every change below before it returns,
        # so a suspension or revocation applies to the next request. Only this process
        # writes these records while it runs (offline commands need the daemon stopped).
        self._allowed_lock = threading.Lock()
        self._allowed_epoch = 0
        self._accounts_seen: dict[str, tuple[str, int] | None] = {}
        self._revoked_seen: dict[str, bool] = {}

    def _changed(self) -> None:
        with self._allowed_lock:
            self._allowed_epoch += 1
            self._accounts_seen.clear()
            self._revoked_seen.clear()
        for listener in self.change_listeners:
            listener()

    def _db(self):
        return self.env.db(S.DB_ACCOUNTS)

    # --- reading --------------------------------------------------------------------------

    def get(self, client_id: str) -> dict:
        with self.env.read() as txn:
            raw = txn.get(client_id.encode("utf-8"), db=self._db())
        if raw is None:
            raise NotFound(f"no account {client_id!r}", code="account_not_found")
        return W.unpack(raw)

    def list(self, *, include_deleted: bool = False) -> list[dict]:
        with self.env.read() as txn:
            accounts = [W.unpack(v) for _, v in txn.cursor(db=self._db())]
        return [a for a in accounts if include_deleted or a["status"] != DELETED]

    def has_admin(self) -> bool:
        return any(a["role"] == R.ADMIN and a["status"] == ACTIVE for a in self.list())

    # --- changing -------------------------------------------------------------------------

    def _new_secret(self, now: float) -> tuple[str, dict]:
        secret = secrets.token_urlsafe(32)
        return secret, {"secret_hash": _hash_secret(secret), "secret_created_at": now,
                        "secret_expires_at": now + self.secret_ttl}

    def _update(self, client_id: str, actor: W.Actor, what: str, change) -> dict:
        """Apply ``change(account)`` (which returns a dict of WAL details) in one
        transaction, with its WAL record; returns the updated account."""
        with self.env.write() as txn:
            raw = txn.get(client_id.encode("utf-8"), db=self._db())
            if raw is None:
                raise NotFound(f"no account {client_id!r}", code="account_not_found")
            account = W.unpack(raw)
            details = change(account) or {}
            account["updated_at"] = time.time()
            account["updated_by"] = actor.id
            txn.put(client_id.encode("utf-8"), W.pack(account), db=self._db())
            W.append(txn, self.env, W.ACCOUNT_UPDATE, actor,
                     data={"client_id": client_id, "change": what, **details})
        log.info("account %s: %s by %s", client_id, what, actor.id)
        self._changed()
        return account

    def create(self, *, name: str, role: str, actor: W.Actor, scopes: list[str] | None = None,
               system: bool = False) -> tuple[dict, str]:
        """A new active account and its secret (shown once, never stored in the clear)."""
        _check_role_and_scopes(role, scopes)
        if not isinstance(name, str) or not 1 <= len(name) <= 64 or not name.isprintable():
            raise ValidationError("name must be 1-64 printable characters",
                                  code="invalid_name")
        now = time.time()
        secret, secret_fields = self._new_secret(now)
        account = {
            "client_id": "cl_" + secrets.token_hex(8), "name": name, "role": role,
            "scopes": R.grantable(role, scopes), "status": ACTIVE, "system": system,
            "created_at": now, "created_by": actor.id, "token_generation": 1,
            **secret_fields,
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
        self._changed()
        return account, secret

    def set_status(self, client_id: str, status: str, actor: W.Actor) -> dict:
        """Suspend, reactivate or (softly) delete; a system account can only stay active."""
        def change(account):
            current = account["status"]
            if status == current:
                return {"status": status}
            if status not in STATUS_TRANSITIONS.get(current, ()):
                raise Conflict(f"an account that is {current} cannot become {status}",
                               code="invalid_account_transition")
            if account.get("system"):
                raise Forbidden("the system account can be neither suspended nor deleted",
                                code="system_account")
            account["status"] = status
            if status != ACTIVE:
                _new_generation(account)  # its tokens stop working at once
            return {"from": current, "status": status}
        return self._update(client_id, actor, f"status {status}", change)

    def rotate_secret(self, client_id: str, actor: W.Actor, *,
                      grace_seconds: float = 0) -> tuple[dict, str]:
        """A new secret (returned, shown once); the old one keeps working for
        ``grace_seconds`` (0: stops now; at most 7 days)."""
        if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
            raise ValidationError(f"grace_seconds must be 0-{MAX_GRACE_SECONDS}",
                                  code="invalid_grace")
        holder = {}

        def change(account):
            if account["status"] == DELETED:
                raise Conflict("a deleted account cannot get a new secret",
                               code="account_deleted")
            now = time.time()
            secret, fields = self._new_secret(now)
            if grace_seconds:
                account["previous_secret_hash"] = account["secret_hash"]
                account["previous_secret_valid_until"] = now + grace_seconds
            else:
                account.pop("previous_secret_hash", None)
                account.pop("previous_secret_valid_until", None)
            account.update(fields)
            holder["secret"] = secret
            return {"grace_seconds": grace_seconds,
                    "secret_expires_at": fields["secret_expires_at"]}
        account = self._update(client_id, actor, "secret rotated", change)
        return account, holder["secret"]

    def set_role(self, client_id: str, actor: W.Actor, *, role: str | None = None,
                 scopes: list[str] | None = None) -> dict:
        def change(account):
            new_role = role or account["role"]
            _check_role_and_scopes(new_role, scopes)
            if account.get("system") and new_role != R.ADMIN:
                raise Forbidden("the system account stays an admin", code="system_account")
            old = (account["role"], account["scopes"])
            account["role"] = new_role
            account["scopes"] = R.grantable(new_role, scopes)
            _new_generation(account)  # tokens carry the role: old ones must not outlive it
            return {"from": {"role": old[0], "scopes": old[1]},
                    "role": new_role, "scopes": account["scopes"]}
        return self._update(client_id, actor, "role", change)

    def revoke_all_tokens(self, client_id: str, actor: W.Actor) -> dict:
        def change(account):
            _new_generation(account)
            return {"token_generation": account["token_generation"]}
        return self._update(client_id, actor, "tokens revoked", change)

    def revoke_token(self, jti: str, exp: int, actor: W.Actor, *, client_id: str) -> None:
        with self.env.write() as txn:
            txn.put(jti.encode("utf-8"), W.pack({"exp": exp}), db=self.env.db(S.DB_REVOKED))
            W.append(txn, self.env, W.ACCOUNT_UPDATE, actor,
                     data={"client_id": client_id, "change": "token revoked", "jti": jti})
        self._changed()

    # --- checking ---------------------------------------------------------------------------

    def find(self, client_id: str) -> dict | None:
        """The account, or None if there is no such client id (a quick LMDB read)."""
        try:
            return self.get(client_id) if client_id else None
        except NotFound:
            return None

    def authenticate(self, client_id: str, secret: str, *, now: float | None = None) -> dict:
        """The account if ``secret`` is its current secret (or its previous one within the
        rotation grace) and it may sign in; otherwise Unauthorized with code
        ``invalid_client`` (or ``secret_expired`` / ``account_inactive`` once the right
        secret has been proven). Runs Argon2id: call it on the verification pool."""
        return self.authenticate_which(client_id, secret, now=now)[0]

    def authenticate_which(self, client_id: str, secret: str, *,
                           now: float | None = None) -> tuple[dict, bool]:
        """As ``authenticate``; also says whether it was the current secret (False: the
        previous one, inside its rotation grace)."""
        now = time.time() if now is None else now
        account = self.find(client_id)
        if account is None:
            _verify_secret(self._dummy_hash, secret)
            raise Unauthorized("unknown client or wrong secret", code="invalid_client")
        current = _verify_secret(account["secret_hash"], secret)
        previous = not current and account.get("previous_secret_valid_until", 0) > now and \
            _verify_secret(account.get("previous_secret_hash"), secret)
        if not current and not previous:
            raise Unauthorized("unknown client or wrong secret", code="invalid_client")
        return self.admit(account, current=current, now=now), current

    def admit(self, account: dict, *, current: bool = True, now: float | None = None) -> dict:
        """``account`` if it may sign in with a secret already proven (``current``: its
        current secret, else its previous one in the grace); Unauthorized otherwise."""
        now = time.time() if now is None else now
        if account["status"] != ACTIVE:
            raise Unauthorized(f"account is {account['status']}", code="account_inactive")
        if current and account.get("secret_expires_at") and account["secret_expires_at"] <= now:
            raise Unauthorized("client secret has expired; rotate it", code="secret_expired")
        return account

    def token_allowed(self, sub: str, generation: int, jti: str) -> bool:
        """Whether a token (already verified) may still be used: its account is active,
        the token is of the account's current generation, and it is not revoked itself.
        Answered from memory after the first read: the LMDB read releases the GIL, and
        the event loop then waits to get it back behind worker threads."""
        account = self._accounts_seen.get(sub, False)
        revoked = self._revoked_seen.get(jti)
        if account is False or revoked is None:
            with self._allowed_lock:
                epoch = self._allowed_epoch
            with self.env.read() as txn:
                raw = txn.get(sub.encode("utf-8"), db=self._db())
                revoked_db = self.env.db(S.DB_REVOKED)
                revoked = revoked_db is not None and \
                    txn.get(jti.encode("utf-8"), db=revoked_db) is not None
            if raw is None:
                account = None
            else:
                record = W.unpack(raw)
                account = (record["status"], record.get("token_generation", 1))
            with self._allowed_lock:
                # A change that committed meanwhile emptied the maps: what was read
                # before it must not be kept.
                if epoch == self._allowed_epoch:
                    if len(self._revoked_seen) >= _SEEN_MAX:
                        self._revoked_seen.clear()
                    if len(self._accounts_seen) >= _SEEN_MAX:
                        self._accounts_seen.clear()
                    self._accounts_seen[sub] = account
                    self._revoked_seen[jti] = revoked
        if account is None or revoked:
            return False
        return account[0] == ACTIVE and generation == account[1]

    def cluster_state(self, now: float | None = None) -> tuple[dict, dict]:
        """What an admin puts in the cluster document so that every node can check tokens
        alone: client id → {status, generation, role} of every account (deleted ones too:
        their tokens must keep failing), and jti → exp of tokens revoked one by one and not
        yet expired. No secrets."""
        now = time.time() if now is None else now
        with self.env.read() as txn:
            accounts = {a["client_id"]: {"status": a["status"],
                                         "generation": a.get("token_generation", 1),
                                         "role": a["role"]}
                        for a in (W.unpack(v) for _, v in txn.cursor(db=self._db()))}
            revoked_db = self.env.db(S.DB_REVOKED)
            revoked = {} if revoked_db is None else {
                k.decode("utf-8"): int(W.unpack(v)["exp"])
                for k, v in txn.cursor(db=revoked_db)}
        return accounts, {j: e for j, e in revoked.items() if e > now}

    def purge_revoked(self, now: float | None = None) -> int:
        """Forget revocations of tokens that have expired anyway."""
        now = time.time() if now is None else now
        removed = 0
        with self.env.write() as txn:
            cur = txn.cursor(db=self.env.db(S.DB_REVOKED))
            for key, raw in list(cur):
                if W.unpack(raw)["exp"] < now:
                    txn.delete(key, db=self.env.db(S.DB_REVOKED))
                    removed += 1
        return removed

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


def _new_generation(account: dict) -> None:
    account["token_generation"] = account.get("token_generation", 1) + 1


def _check_role_and_scopes(role: str, scopes) -> None:
    if role not in R.ROLES:
        raise ValidationError(f"role must be one of {', '.join(R.ROLES)}", code="invalid_role")
    unknown = sorted(set(scopes or ()) - set(R.SCOPES))
    if unknown:
        raise ValidationError(f"unknown scopes: {', '.join(unknown)}", code="invalid_scope")
