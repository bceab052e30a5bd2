"""The token signing keys (Ed25519) and their public form (JWKS, RFC 8037 / RFC 7638).

Keys live in ``<data_dir>/keys/signing/<kid>.key`` (raw seed, 0600); ``keys/signing.json``
says which one signs and until when each retired one still verifies. The ``kid`` is the
RFC 7638 thumbprint of the public key. Rotation (a new active key while old ones stay valid
through a grace period) is ``KeyRing.rotate``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import nacl.signing

from ..engine import durable
from ..engine.node import b64url, load_or_create_key


def public_jwk(verify_key: nacl.signing.VerifyKey) -> dict:
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(bytes(verify_key))}


def thumbprint(jwk: dict) -> str:
    """RFC 7638: SHA-256 over the required members in lexicographic order, no spaces."""
    canonical = json.dumps({"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"]},
                           separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


class KeyRing:
    """Signing keys of an admin node. Rotations are serialized; reads need no lock."""

    def __init__(self, data_dir: str):
        self._rotate_lock = threading.Lock()
        self.dir = os.path.join(data_dir, "keys", "signing")
        self.manifest_path = os.path.join(data_dir, "keys", "signing.json")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.keys: dict[str, nacl.signing.SigningKey] = {}
        self.manifest = self._load_manifest()
        for entry in self.manifest["keys"]:
            self.keys[entry["kid"]] = load_or_create_key(
                os.path.join(self.dir, f"{entry['kid']}.key"))
        if not self.manifest.get("active"):
            self.rotate(grace_seconds=0)

    def _load_manifest(self) -> dict:
        try:
            with open(self.manifest_path, "rb") as f:
                return json.load(f)
        except FileNotFoundError:
            return {"active": None, "keys": []}

    @property
    def active_kid(self) -> str:
        return self.manifest["active"]

    @property
    def active_key(self) -> nacl.signing.SigningKey:
        return self.keys[self.active_kid]

    def rotate(self, grace_seconds: float) -> str:
        """Make a new active key; the old one keeps verifying for ``grace_seconds`` (give at
        least the longest token lifetime, so that no valid token is refused). Durable when
        it returns. Readers in other threads see the old manifest or the new one, whole."""
        with self._rotate_lock:
            return self._rotate(grace_seconds)

    def _rotate(self, grace_seconds: float) -> str:
        key = nacl.signing.SigningKey.generate()
        kid = thumbprint(public_jwk(key.verify_key))
        durable.atomic_write(os.path.join(self.dir, f"{kid}.key"), bytes(key), mode=0o600)
        self.keys[kid] = key
        now = time.time()
        entries = [dict(e) for e in self.manifest["keys"]]
        for entry in entries:
            if entry["kid"] == self.manifest.get("active"):
                entry["retired_at"] = now
                entry["verify_until"] = now + grace_seconds
        entries.append({"kid": kid, "created_at": now})
        manifest = {"active": kid, "keys": entries}
        durable.atomic_write(self.manifest_path,
                             json.dumps(manifest, indent=2).encode() + b"\n", mode=0o600)
        self.manifest = manifest
        return kid

    def describe(self) -> list[dict]:
        """Every key with its dates (no secrets), newest first."""
        active = self.manifest["active"]
        return [dict(e, active=e["kid"] == active) for e in reversed(self.manifest["keys"])]

    def verifying_keys(self, now: float | None = None) -> dict[str, nacl.signing.VerifyKey]:
        """kid → public key for every key a token may still be signed with."""
        now = time.time() if now is None else now
        out = {}
        for entry in self.manifest["keys"]:
            until = entry.get("verify_until")
            if until is None or until > now:
                out[entry["kid"]] = self.keys[entry["kid"]].verify_key
        return out

    def accepts(self, kid: str, now: float) -> bool:
        """Whether a token signed with ``kid`` may still be verified at ``now``."""
        for entry in self.manifest["keys"]:
            if entry["kid"] == kid:
                until = entry.get("verify_until")
                return until is None or until > now
        return False

    def jwks(self) -> dict:
        keys = []
        for kid, vk in self.verifying_keys().items():
            keys.append({**public_jwk(vk), "kid": kid, "alg": "EdDSA", "use": "sig"})
        return {"keys": keys}
