"""This node's identity: an id and an Ed25519 key (``keys/node.key``, 0600).

The key signs each attr.json's fixity payload. ``node.json`` beside the data holds the id
and the public key in the clear, so anyone can check a signature offline, without ArtStore.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket

import nacl.exceptions
import nacl.signing

from . import durable
from .errors import StoreCorrupt


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_or_create_key(path: str) -> nacl.signing.SigningKey:
    """The Ed25519 key stored at ``path`` (a raw 32-byte seed), created 0600 if missing."""
    try:
        with open(path, "rb") as f:
            seed = f.read()
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        key = nacl.signing.SigningKey.generate()
        durable.atomic_write(path, bytes(key), mode=0o600)
        return key
    if len(seed) != 32:
        raise StoreCorrupt(f"{path}: not an Ed25519 seed ({len(seed)} bytes)")
    return nacl.signing.SigningKey(seed)


def node_id_of(public_key: bytes) -> str:
    """A node's id: derived from its Ed25519 public key, so it cannot be claimed by another."""
    return "n-" + hashlib.sha256(bytes(public_key)).hexdigest()[:16]


def verify_signature(public_key: bytes, payload: bytes, signature: dict) -> bool:
    """Whether ``signature`` (as ``NodeIdentity.sign`` makes it) is the holder of
    ``public_key``'s signature of ``payload``, and names that key's node id."""
    try:
        if signature.get("key_id") != node_id_of(public_key):
            return False
        nacl.signing.VerifyKey(bytes(public_key)).verify(
            payload, b64url_decode(signature["value"]))
        return True
    except (nacl.exceptions.BadSignatureError, KeyError, ValueError, TypeError,
            AttributeError):
        return False


class NodeIdentity:
    def __init__(self, data_dir: str, name: str | None = None):
        self.key = load_or_create_key(os.path.join(data_dir, "keys", "node.key"))
        public = bytes(self.key.verify_key)
        self.node_id = node_id_of(public)
        self.name = name or socket.gethostname()
        info_path = os.path.join(data_dir, "node.json")
        info = {"node_id": self.node_id, "name": self.name, "algorithm": "Ed25519",
                "public_key": b64url(public)}
        try:
            with open(info_path, "rb") as f:
                current = json.load(f)
        except (FileNotFoundError, ValueError):
            current = None
        if current != info:
            durable.atomic_write(info_path, json.dumps(info, indent=2).encode() + b"\n")

    def sign(self, payload: bytes) -> dict:
        sig = self.key.sign(payload).signature
        return {"alg": "Ed25519", "key_id": self.node_id, "value": b64url(sig)}

    def verify(self, payload: bytes, signature: dict) -> bool:
        try:
            self.key.verify_key.verify(payload, b64url_decode(signature["value"]))
            return True
        except (nacl.exceptions.BadSignatureError, KeyError, ValueError, TypeError):
            return False
