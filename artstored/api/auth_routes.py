"""``POST /api/v1/auth/token`` (OAuth 2.0 client credentials, RFC 6749 §4.4) and
``GET /api/v1/auth/jwks`` (the public keys that verify our tokens).

Errors are problem+json like everywhere else, and also carry RFC 6749 §5.2's ``error`` and
``error_description`` members, so an OAuth client library understands them.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse

from aiohttp import web

from ..auth import roles as R
from ..engine.errors import BadRequest, Unauthorized
from .app import public
from .responses import json_response
from .state import blocking, services


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
    if request.content_type != "application/x-www-form-urlencoded":
        raise _oauth_error(BadRequest, "invalid_request",
                           "send application/x-www-form-urlencoded parameters")
    form = await request.post()
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
    if not client_id or not secret:
        raise _oauth_error(Unauthorized, "invalid_client", "client credentials are required")
    try:
        account = await blocking(svc.accounts.authenticate, str(client_id), str(secret))
    except Unauthorized as exc:
        raise _oauth_error(Unauthorized, "invalid_client" if exc.code == "invalid_client"
                           else exc.code, exc.detail) from None
    scopes = R.narrow(account["scopes"], form.get("scope"))
    if form.get("scope") and not scopes:
        raise _oauth_error(BadRequest, "invalid_scope",
                           "none of the requested scopes is granted to this client")
    access_token, expires_in = svc.tokens.issue(
        sub=account["client_id"], name=account["name"], role=account["role"], scopes=scopes)
    return json_response(
        {"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in,
         "scope": " ".join(scopes)},
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


@public
async def jwks(request: web.Request) -> web.Response:
    svc = services(request)
    return json_response(svc.keyring.jwks(), headers={"Cache-Control": "max-age=300"})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/api/v1/auth/token", token)
    router.add_get("/api/v1/auth/jwks", jwks)
