"""``/api/v1/accounts``: service accounts (admin only). The secret is in the answer to a
create, once, and nowhere else."""

from __future__ import annotations

from aiohttp import web

from ..auth import roles as R
from ..auth.accounts import public_view
from ..engine.errors import ValidationError
from .app import actor_of, requires
from .responses import json_response, read_json
from .state import blocking, services


@requires(R.ADMIN, R.ADMIN_WRITE)
async def create(request: web.Request) -> web.Response:
    svc = services(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ValidationError('send {"name": ..., "role": "user|operator|admin"}',
                              code="invalid_account")
    scopes = body.get("scopes")
    if scopes is not None and (not isinstance(scopes, list)
                               or not all(isinstance(s, str) for s in scopes)):
        raise ValidationError("scopes must be a list of strings", code="invalid_scope")
    account, secret = await blocking(svc.accounts.create, name=body.get("name"),
                                     role=body.get("role", R.USER), scopes=scopes,
                                     actor=actor_of(request))
    view = public_view(account)
    view["client_secret"] = secret
    return json_response(view, status=201,
                         headers={"Location": f"/api/v1/accounts/{account['client_id']}",
                                  "Cache-Control": "no-store"})


@requires(R.ADMIN, R.ADMIN_READ)
async def list_accounts(request: web.Request) -> web.Response:
    svc = services(request)
    items = [public_view(a) for a in await blocking(svc.accounts.list)]
    return json_response({"items": items, "next_cursor": None})


@requires(R.ADMIN, R.ADMIN_READ)
async def get_account(request: web.Request) -> web.Response:
    svc = services(request)
    return json_response(public_view(await blocking(svc.accounts.get,
                                                    request.match_info["client_id"])))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/api/v1/accounts", create)
    router.add_get("/api/v1/accounts", list_accounts)
    router.add_get("/api/v1/accounts/{client_id}", get_account)
