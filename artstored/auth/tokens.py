"""Access tokens: JWTs signed with Ed25519 (``alg: EdDSA``, RFC 8037), checked locally.

Claims: ``iss``, ``sub`` (client id), ``name``, ``role``, ``scope`` (space-separated),
``iat``, ``nbf``, ``exp``, ``jti``, and ``gen`` (the account's token generation: revoking
all of an account's tokens moves it on). The signature is pynacl's Ed25519; the JOSE framing
(base64url JSON) is all that is written here.

``verify`` accepts exactly one algorithm, EdDSA, with a ``kid`` the key ring knows: there is
no way to make it take ``alg: none`` or an HMAC over the public key. It raises Unauthorized
with a code that says what was wrong (``token_malformed``, ``token_invalid``,
``token_expired``, ``token_not_yet_valid``).
"""

from __future__ import annotations

import binascii
import json
import secrets
import time
from dataclasses import dataclass

import nacl.exceptions

from ..engine.errors import Unauthorized
from ..engine.node import b64url, b64url_decode
from .keys import KeyRing
from .roles import RANK

LEEWAY_SECONDS = 30
MAX_TOKEN_BYTES = 8192
VERIFIED_CACHE_SIZE = 4096


@dataclass(frozen=True)
class Claims:
    sub: str
    name: str
    role: str
    scopes: frozenset[str]
    exp: int
    jti: str
    gen: int
    raw: dict


def key_text(text) -> bool:
    """Whether ``text`` can name a record: a string of 1-256 bytes of UTF-8 (no lone
    surrogate)."""
    try:
        return isinstance(text, str) and 1 <= len(text.encode("utf-8")) <= 256
    except UnicodeEncodeError:
        return False


def _encode_part(obj: dict) -> str:
    return b64url(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())


class TokenService:
    """Issues and verifies tokens with a node's key ring."""

    def __init__(self, keyring: KeyRing, issuer: str, ttl_seconds: int = 1800):
        self.keyring = keyring
        self.issuer = issuer
        self.ttl = ttl_seconds
        # token -> (kid, Claims) of tokens whose signature verified: a client repeats its
        # token for up to 30 minutes, and an Ed25519 verify costs more than the rest of a
        # small request. Time claims and the key's validity are checked on every use.
        self._verified: dict[str, tuple[str, Claims]] = {}

    def issue(self, *, sub: str, name: str, role: str, scopes: list[str], gen: int = 1,
              now: float | None = None, ttl: int | None = None) -> tuple[str, int]:
        """(token, expires_in seconds)."""
        now = int(time.time() if now is None else now)
        ttl = self.ttl if ttl is None else ttl
        header = {"alg": "EdDSA", "typ": "JWT", "kid": self.keyring.active_kid}
        claims = {"iss": self.issuer, "sub": sub, "name": name, "role": role,
                  "scope": " ".join(scopes), "iat": now, "nbf": now, "exp": now + ttl,
                  "jti": secrets.token_urlsafe(16), "gen": gen}
        signing_input = f"{_encode_part(header)}.{_encode_part(claims)}"
        sig = self.keyring.active_key.sign(signing_input.encode("ascii")).signature
        return f"{signing_input}.{b64url(sig)}", ttl

    def verify(self, token: str, *, now: float | None = None) -> Claims:
        now = time.time() if now is None else now
        cached = self._verified.get(token)
        if cached is not None and self.keyring.accepts(cached[0], now):
            return self._check_claims(cached[1].raw, now)
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthorized("token too long", code="token_malformed")
        parts = token.split(".")
        if len(parts) != 3:
            raise Unauthorized("a token has three dot-separated parts", code="token_malformed")
        try:
            header = json.loads(b64url_decode(parts[0]))
            claims = json.loads(b64url_decode(parts[1]))
            signature = b64url_decode(parts[2])
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise Unauthorized("token is not valid base64url JSON",
                               code="token_malformed") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise Unauthorized("token header and payload must be objects",
                               code="token_malformed")
        if header.get("alg") != "EdDSA":
            raise Unauthorized("only alg EdDSA is accepted", code="token_invalid")
        if "crit" in header:
            raise Unauthorized("unsupported critical header", code="token_invalid")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise Unauthorized("token header needs a kid string", code="token_malformed")
        key = self.keyring.verifying_keys(now).get(kid)
        if key is None:
            raise Unauthorized("token signed with an unknown key", code="token_invalid")
        try:
            key.verify(f"{parts[0]}.{parts[1]}".encode("ascii"), signature)
        except (nacl.exceptions.BadSignatureError, ValueError):
            raise Unauthorized("token signature does not verify", code="token_invalid") \
                from None
        checked = self._check_claims(claims, now)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (header["kid"], checked)
        return checked

    def _check_claims(self, claims: dict, now: float) -> Claims:
        for name, kind in (("sub", str), ("role", str), ("scope", str), ("exp", int),
                           ("nbf", int), ("iat", int), ("jti", str), ("iss", str)):
            if not isinstance(claims.get(name), kind) or isinstance(claims.get(name), bool):
                raise Unauthorized(f"token lacks a valid {name!r} claim", code="token_invalid")
        # Only this issuer signs, and it writes none of these; but a claim used as a number
        # or as a database key must be one (checked here, not met as a 500 further on).
        gen = claims.get("gen", 1)
        if not isinstance(gen, int) or isinstance(gen, bool) or not 0 <= gen < 2 ** 53 or \
                not all(0 <= claims[n] < 2 ** 53 for n in ("exp", "nbf", "iat")):
            raise Unauthorized("token has a number claim out of range", code="token_invalid")
        if not all(key_text(claims[n]) for n in ("sub", "jti")):
            raise Unauthorized("token has an invalid sub or jti", code="token_invalid")
        if claims["iss"] != self.issuer:
            raise Unauthorized("token from another issuer", code="token_invalid")
        if claims["role"] not in RANK:
            raise Unauthorized("token names an unknown role", code="token_invalid")
        if claims["exp"] <= now - LEEWAY_SECONDS:
            raise Unauthorized("token has expired", code="token_expired")
        if claims["nbf"] > now + LEEWAY_SECONDS:
            raise Unauthorized("token is not valid yet", code="token_not_yet_valid")
        return Claims(sub=claims["sub"], name=str(claims.get("name", claims["sub"])),
                      role=claims["role"], scopes=frozenset(claims["scope"].split()),
                      exp=claims["exp"], jti=claims["jti"], gen=gen,
                      raw=claims)
