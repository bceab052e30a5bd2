"""``/api/v1/accounts``: service accounts (admin only). A secret appears in the answer to a
create or a rotation, once, and nowhere else."""

from __future__ import annotations

from aiohttp import web

from ..auth import roles as R
from ..auth.accounts import ACTIVE, DELETED, SUSPENDED, public_view
from ..engine.errors import ValidationError
from .app import actor_of, requires
from .responses import json_response, read_json
from .state import blocking, services


def _with_secret(account: dict, secret: str, status: int = 200) -> web.Response:
    view = public_view(account)
    view["client_secret"] = secret
    return json_response(view, status=status,
                         headers={"Location": f"/api/v1/accounts/{account['client_id']}",
                                  "Cache-Control": "no-store"})


def _scopes(body: dict):
    scopes = body.get("scopes")
    if scopes is not None and (not isinstance(scopes, list)
                               or not all(isinstance(s, str) for s in scopes)):
        raise ValidationError("scopes must be a list of strings", code="invalid_scope")
    return scopes


async def _object(request: web.Request) -> dict:
    body = await read_json(request) if request.can_read_body else {}
    if not isinstance(body, dict):
        raise ValidationError("send a JSON object", code="invalid_account")
    return body


@requires(R.ADMIN, R.ADMIN_WRITE)
async def create(request: web.Request) -> web.Response:
    svc = services(request)
    svc.require_token_authority()
    body = await _object(request)
    account, secret = await blocking(svc.accounts.create, name=body.get("name"),
                                     role=body.get("role", R.USER), scopes=_scopes(body),
                                     actor=actor_of(request))
    return _with_secret(account, secret, status=201)


@requires(R.ADMIN, R.ADMIN_READ)
async def list_accounts(request: web.Request) -> web.Response:
    svc = services(request)
    svc.require_token_authority()
    deleted = request.query.get("include_deleted") in ("1", "true", "yes")
    items = [public_view(a) for a in await blocking(svc.accounts.list,
                                                    include_deleted=deleted)]
    return json_response({"items": items, "next_cursor": None})


@requires(R.ADMIN, R.ADMIN_READ)
async def get_account(request: web.Request) -> web.Response:
    svc = services(request)
    svc.require_token_authority()
    return json_response(public_view(await blocking(svc.accounts.get,
                                                    request.match_info["client_id"])))


@requires(R.ADMIN, R.ADMIN_WRITE)
async def update(request: web.Request) -> web.Response:
    """``{"status": "active"|"suspended"}``, ``{"role": ..., "scopes": [...]}``, or both."""
    svc = services(request)
    svc.require_token_authority()
    client_id = request.match_info["client_id"]
    body = await _object(request)
    unknown = set(body) - {"status", "role", "scopes"}
    if unknown:
        raise ValidationError(f"cannot change {', '.join(sorted(unknown))}",
                              code="invalid_account")
    actor = actor_of(request)
    account = None
    if "role" in body or "scopes" in body:
        account = await blocking(svc.accounts.set_role, client_id, actor,
                                 role=body.get("role"), scopes=_scopes(body))
    if "status" in body:
        if body["status"] not in (ACTIVE, SUSPENDED):
            raise ValidationError("status must be active or suspended (DELETE deletes)",
                                  code="invalid_account")
        account = await blocking(svc.accounts.set_status, client_id, body["status"], actor)
    if account is None:
        account = await blocking(svc.accounts.get, client_id)
    return json_response(public_view(account))


@requires(R.ADMIN, R.ADMIN_WRITE)
async def delete(request: web.Request) -> web.Response:
    svc = services(request)
    svc.require_token_authority()
    account = await blocking(svc.accounts.set_status, request.match_info["client_id"],
                             DELETED, actor_of(request))
    return json_response(public_view(account))


@requires(R.ADMIN, R.ADMIN_WRITE)
async def rotate_secret(request: web.Request) -> web.Response:
    """A new secret, shown once; ``{"grace_seconds": N}`` keeps the old one for N s."""
    svc = services(request)
    svc.require_token_authority()
    body = await _object(request)
    grace = body.get("grace_seconds", 0)
    if not isinstance(grace, (int, float)) or isinstance(grace, bool):
        raise ValidationError("grace_seconds must be a number", code="invalid_grace")
    account, secret = await blocking(svc.accounts.rotate_secret,
                                     request.match_info["client_id"], actor_of(request),
                                     grace_seconds=float(grace))
    return _with_secret(account, secret)


@requires(R.ADMIN, R.ADMIN_WRITE)
async def revoke_tokens(request: web.Request) -> web.Response:
    svc = services(request)
    svc.require_token_authority()
    account = await blocking(svc.accounts.revoke_all_tokens, request.match_info["client_id"],
                             actor_of(request))
    return json_response(public_view(account))


@requires(R.ADMIN, R.ADMIN_WRITE)
async def create_s3_key(request: web.Request) -> web.Response:
    """A new S3 access key of the account; its secret appears in this answer only."""
    svc = services(request)
    svc.require_token_authority()
    record, secret = await blocking(svc.s3_keys.create, request.match_info["client_id"],
                                    actor_of(request))
    return json_response({**record, "secret_access_key": secret}, status=201,
                         headers={"Cache-Control": "no-store"})


@requires(R.ADMIN, R.ADMIN_READ)
async def list_s3_keys(request: web.Request) -> web.Response:
    svc = services(request)
    svc.require_token_authority()
    await blocking(svc.accounts.get, request.match_info["client_id"])   # 404 if none
    keys = await blocking(svc.s3_keys.list, request.match_info["client_id"])
    return json_response({"items": keys})


@requires(R.ADMIN, R.ADMIN_WRITE)
async def revoke_s3_key(request: web.Request) -> web.Response:
    svc = services(request)
    svc.require_token_authority()
    record = await blocking(svc.s3_keys.revoke, request.match_info["access_key_id"],
                            actor_of(request), client_id=request.match_info["client_id"])
    return json_response(record)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/api/v1/accounts", create)
    router.add_get("/api/v1/accounts", list_accounts)
    router.add_get("/api/v1/accounts/{client_id}", get_account)
    router.add_patch("/api/v1/accounts/{client_id}", update)
    router.add_delete("/api/v1/accounts/{client_id}", delete)
    router.add_post("/api/v1/accounts/{client_id}/rotate-secret", rotate_secret)
    router.add_post("/api/v1/accounts/{client_id}/revoke-tokens", revoke_tokens)
    router.add_post("/api/v1/accounts/{client_id}/s3-keys", create_s3_key)
    router.add_get("/api/v1/accounts/{client_id}/s3-keys", list_s3_keys)
    router.add_delete("/api/v1/accounts/{client_id}/s3-keys/{access_key_id}", revoke_s3_key)
