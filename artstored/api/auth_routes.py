"""``POST /api/v1/auth/token`` (OAuth 2.0 client credentials, RFC 6749 §4.4) and
``GET /api/v1/auth/jwks`` (the public keys that verify our tokens).

Errors are problem+json like everywhere else, and also carry RFC 6749 §5.2's ``error`` and
``error_description`` members, so an OAuth client library understands them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import time
import urllib.parse

from aiohttp import web

from ..auth import roles as R
from ..auth.tokens import key_text
from ..engine import wal as W
from ..engine.errors import ArtStoreError, BadRequest, Unauthorized, ValidationError
from .app import actor_of, public, requires
from .responses import json_response, read_json
from .state import blocking, services

class TooManyAttempts(ArtStoreError):
    code = "too_many_requests"
    status = 429
    title = "Too many sign-in attempts"


def _oauth_error(cls, error: str, description: str, **extra):
    return cls(description, code=error, error=error, error_description=description, **extra)


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _oauth_error(BadRequest, "invalid_request", "malformed Basic credentials") \
            from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise _oauth_error(BadRequest, "invalid_request", "malformed Basic credentials")
    # RFC 6749 §2.3.1: both are form-urlencoded before Basic encoding.
    return urllib.parse.unquote_plus(client_id), urllib.parse.unquote_plus(secret)


@public
async def token(request: web.Request) -> web.Response:
    svc = services(request)
    svc.require_token_authority()
    if request.content_type != "application/x-www-form-urlencoded":
        raise _oauth_error(BadRequest, "invalid_request",
                           "send application/x-www-form-urlencoded parameters")
    try:
        form = await request.post()
    except (LookupError, UnicodeDecodeError):  # an unknown charset, or bytes not in it
        raise _oauth_error(BadRequest, "invalid_request",
                           "the form is not valid in its charset (send UTF-8)") from None
    if form.get("grant_type") != "client_credentials":
        if not form.get("grant_type"):
            raise _oauth_error(BadRequest, "invalid_request", "grant_type is required")
        raise _oauth_error(BadRequest, "unsupported_grant_type",
                           "only grant_type=client_credentials is supported")
    basic = _basic_credentials(request.headers.get("Authorization", ""))
    if basic and ("client_id" in form or "client_secret" in form):
        raise _oauth_error(BadRequest, "invalid_request",
                           "send credentials in the Authorization header or the form, not both")
    client_id, secret = basic or (form.get("client_id", ""), form.get("client_secret", ""))
    client_id, secret = str(client_id), str(secret)
    if not client_id or not secret:
        raise _oauth_error(Unauthorized, "invalid_client", "client credentials are required")
    address = request.remote or "-"
    account = await _sign_in(svc, client_id, secret, address)
    scopes = R.narrow(account["scopes"], form.get("scope"))
    if form.get("scope") and not scopes:
        raise _oauth_error(BadRequest, "invalid_scope",
                           "none of the requested scopes is granted to this client")
    access_token, expires_in = svc.tokens.issue(
        sub=account["client_id"], name=account["name"], role=account["role"], scopes=scopes,
        gen=account.get("token_generation", 1))
    return json_response(
        {"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in,
         "scope": " ".join(scopes)},
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


async def _sign_in(svc, client_id: str, secret: str, address: str) -> dict:
    """The account if the secret is right and the throttle allows it (see
    ``auth.throttle`` for the rules); Unauthorized, TooManyAttempts or SignInBusy."""
    account = svc.accounts.find(client_id)
    if account is not None and svc.proven.proven(client_id, secret, account["secret_hash"]):
        # Proven a moment ago with this very secret: no Argon2id run, and no lock made
        # by someone else's guessing at this address applies.
        try:
            return svc.accounts.admit(account)
        except Unauthorized as exc:
            svc.proven.forget(client_id)
            raise _oauth_error(Unauthorized, exc.code, exc.detail) from None
    wait = svc.throttle.check(client_id, address)
    if wait:
        raise _oauth_error(TooManyAttempts, "too_many_requests",
                           f"too many sign-in attempts; retry in {wait} s", retry_after=wait)
    context = contextvars.copy_context()
    future = svc.verifier.submit(context.run, svc.accounts.authenticate_which, client_id,
                                 secret)
    try:
        account, current = await asyncio.wrap_future(future)
    except Unauthorized as exc:
        svc.metrics.token_failures.labels(exc.code).inc()
        locked = svc.throttle.failed(client_id, address)
        svc.failure_tally.add(client_id, address, exc.code, locked)
        raise _oauth_error(Unauthorized, "invalid_client" if exc.code == "invalid_client"
                           else exc.code, exc.detail) from None
    svc.throttle.succeeded(client_id, address)
    if current:  # a previous secret in its grace is never cached: the grace must end
        svc.proven.remember(client_id, secret, account["secret_hash"])
    return account


@public
async def jwks(request: web.Request) -> web.Response:
    svc = services(request)
    svc.require_token_authority()
    return json_response(svc.keyring.jwks(), headers={"Cache-Control": "max-age=300"})


@requires(R.ADMIN, R.ADMIN_READ)
async def list_keys(request: web.Request) -> web.Response:
    svc = services(request)
    svc.require_token_authority()
    return json_response({"items": svc.keyring.describe(), "next_cursor": None})


@requires(R.ADMIN, R.ADMIN_WRITE)
async def rotate_keys(request: web.Request) -> web.Response:
    """A new signing key; the old one verifies for ``grace_seconds`` (default: the token
    lifetime plus a minute, so no valid token is refused)."""
    svc = services(request)
    svc.require_token_authority()
    body = await read_json(request) if request.can_read_body else {}
    default = svc.tokens.ttl + 60
    grace = body.get("grace_seconds", default) if isinstance(body, dict) else None
    if not isinstance(grace, (int, float)) or isinstance(grace, bool) or \
            not svc.tokens.ttl <= grace <= 30 * 86400:
        raise ValidationError(f"grace_seconds must be {svc.tokens.ttl}-{30 * 86400} "
                              "(at least the token lifetime)", code="invalid_grace")
    kid = await blocking(svc.keyring.rotate, float(grace))
    if svc.cluster is not None:
        svc.cluster.auth_changed()   # members verify with the new key at once
    await blocking(svc.store.record_event, W.KEYS_ROTATE, actor_of(request),
                   {"kid": kid, "grace_seconds": grace})
    return json_response({"active": kid, "items": svc.keyring.describe()})


@requires(R.ADMIN, R.ADMIN_WRITE)
async def revoke(request: web.Request) -> web.Response:
    """Revoke one token: ``{"token": "..."}`` (checked, then its jti revoked) or
    ``{"jti": "...", "client_id": "..."}``."""
    svc = services(request)
    svc.require_token_authority()
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ValidationError('send {"token": ...} or {"jti": ..., "client_id": ...}',
                              code="invalid_revocation")
    if isinstance(body.get("token"), str):
        claims = svc.tokens.verify(body["token"])
        jti, exp, client_id = claims.jti, claims.exp, claims.sub
    elif key_text(body.get("jti")) and key_text(body.get("client_id")):
        jti, client_id = body["jti"], body["client_id"]
        exp = int(time.time()) + svc.tokens.ttl + 60
    else:
        raise ValidationError('send {"token": ...} or {"jti": ..., "client_id": ...}',
                              code="invalid_revocation")
    await blocking(svc.accounts.revoke_token, jti, exp, actor_of(request), client_id=client_id)
    return json_response({"revoked": jti, "client_id": client_id})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/api/v1/auth/token", token)
    router.add_get("/api/v1/auth/jwks", jwks)
    router.add_get("/api/v1/auth/keys", list_keys)
    router.add_post("/api/v1/auth/keys/rotate", rotate_keys)
    router.add_post("/api/v1/auth/revoke", revoke)
