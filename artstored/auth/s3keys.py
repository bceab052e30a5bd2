"""S3 access keys: an access key id and a secret that belong to a service account.

AWS Signature Version 4 needs the secret itself on the server (it is an HMAC key), so unlike
a client secret it cannot be kept as a one-way hash. It is kept sealed (XSalsa20-Poly1305,
pynacl's SecretBox) with a key of this node's (``<data_dir>/keys/s3-seal.key``, 0600): a copy
of store.lmdb alone (a backup, an export) reveals no secret.

A key has no rights of its own: every request signed with it acts as its account, with the
account's role, scopes and status read at that moment, so suspending or deleting the account,
or changing its role, applies to its keys at once. Revoking a key is final. Records live in
the ``s3keys`` LMDB database; creating and revoking are WAL records (never with a secret).
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import threading
import time

import nacl.exceptions
import nacl.secret
import nacl.utils

from ..engine import durable
from ..engine import s3keys as records
from ..engine import wal as W
from ..engine.errors import Conflict
from .accounts import ACTIVE, DELETED, AccountStore

log = logging.getLogger("artstored.auth")

SEAL_KEY_FILE = os.path.join("keys", "s3-seal.key")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def _load_or_create_seal_key(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            key = f.read()
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        key = nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE)
        durable.atomic_write(path, key, mode=0o600)
    if len(key) != nacl.secret.SecretBox.KEY_SIZE:
        raise OSError(f"{path}: not a {nacl.secret.SecretBox.KEY_SIZE}-byte key")
    return key


def public_view(record: dict) -> dict:
    """A key as the API lists it: never its secret."""
    return {k: v for k, v in record.items() if k != "sealed_secret"}


class S3KeyStore:
    """Thread-safe (each call is its own LMDB transaction)."""

    def __init__(self, env, accounts: AccountStore, data_dir: str):
        self.env = env
        self.accounts = accounts
        path = os.path.join(data_dir, SEAL_KEY_FILE)
        if not os.path.exists(path) and records.all_records(env):
            log.error("%s is missing but S3 keys exist: they cannot be used any more (a "
                      "restore without keys/?); put the file back, or create new keys", path)
        self._box = nacl.secret.SecretBox(_load_or_create_seal_key(path))
        # access key id → (record, account, secret) of keys in use: a request reads no LMDB
        # and unseals nothing. Emptied by every change of an account (suspension, role,
        # deletion: AccountStore's listeners) and of a key, before the change returns, so
        # a revocation or a suspension applies to the next request as it does for tokens.
        self._in_use: dict[str, tuple[dict, dict, str]] = {}
        self._in_use_lock = threading.Lock()
        accounts.change_listeners.append(self._forget_all)

    def _forget_all(self) -> None:
        with self._in_use_lock:
            self._in_use.clear()

    def create(self, client_id: str, actor: W.Actor) -> tuple[dict, str]:
        """A new key of ``client_id``'s account and its secret (returned once; the caller
        shows it and forgets it). NotFound ``account_not_found``; Conflict
        ``account_deleted`` for a deleted account. Durable on return."""
        account = self.accounts.get(client_id)
        if account["status"] == DELETED:
            raise Conflict("a deleted account cannot get an S3 key", code="account_deleted")
        secret = secrets.token_urlsafe(30)          # 40 characters, as AWS's are
        access_key_id = "AK" + "".join(secrets.choice(_ALPHABET) for _ in range(18))
        record = {"access_key_id": access_key_id, "client_id": client_id,
                  "status": records.ACTIVE, "created_at": time.time(),
                  "created_by": actor.id,
                  "sealed_secret": base64.b64encode(
                      bytes(self._box.encrypt(secret.encode()))).decode("ascii")}
        records.add(self.env, record, actor)
        return public_view(record), secret

    def list(self, client_id: str | None = None) -> list[dict]:
        return [public_view(r) for r in records.all_records(self.env)
                if client_id is None or r["client_id"] == client_id]

    def revoke(self, access_key_id: str, actor: W.Actor, *,
               client_id: str | None = None) -> dict:
        """Revoke a key for good (idempotent); NotFound ``s3_key_not_found`` if there is
        no such key (of ``client_id``'s account, when given). Durable on return."""
        try:
            return public_view(records.revoke(self.env, access_key_id, actor,
                                              client_id=client_id))
        finally:
            self._forget_all()

    def signing_secret(self, access_key_id: str) -> tuple[dict, dict, str] | None:
        """(key record, account, secret) of an active key; None for an unknown or revoked
        key, or one whose secret this node cannot unseal. The account may be inactive: the
        caller checks the signature first and the account's status after it (see
        ``account_active``), so an inactive account is told apart only to its key's
        holder."""
        if not access_key_id or len(access_key_id) > 128:
            return None
        hit = self._in_use.get(access_key_id)
        if hit is not None:
            return hit
        with self._in_use_lock:
            # Read under the lock: a change that empties the cache meanwhile waits, so
            # nothing read before it is put back after it.
            found = self._look_up(access_key_id)
            if found is not None and len(self._in_use) < 10_000:
                self._in_use[access_key_id] = found
            return found

    def _look_up(self, access_key_id: str) -> tuple[dict, dict, str] | None:
        record = records.get(self.env, access_key_id)
        if record is None or record["status"] != records.ACTIVE:
            return None
        account = self.accounts.find(record["client_id"])
        if account is None:
            return None
        try:
            secret = self._box.decrypt(base64.b64decode(record["sealed_secret"])).decode()
        except (nacl.exceptions.CryptoError, ValueError):
            log.error("S3 key %s: its secret does not unseal with keys/s3-seal.key",
                      access_key_id)
            return None
        return record, account, secret

    @staticmethod
    def account_active(account: dict) -> bool:
        return account["status"] == ACTIVE
