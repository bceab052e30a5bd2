"""``/api/v1/element``: this storage element's mode, capacity and counters; mode changes.
(Its background jobs are in ``api.jobs``.)"""

from __future__ import annotations

from aiohttp import web

from ..auth import roles as R
from ..engine.errors import ValidationError
from ..engine.node import b64url
from .app import actor_of, requires
from .responses import json_response, read_json
from .state import blocking, services


def element_info(svc) -> dict:
    store = svc.store
    state = store.element_state()
    stats = store.stats()
    committer = store.committer.stats
    return {
        "node_id": store.node.node_id,
        "name": store.node.name,
        # The key that signs every attr.json: check a sidecar offline with it.
        "public_key": {"algorithm": "Ed25519", "key_id": store.node.node_id,
                       "value": b64url(bytes(store.node.key.verify_key))},
        "mode": state["mode"],
        "mode_changed_by": state.get("changed_by"),
        "mode_changed_at": state.get("changed_at"),
        "capacity": store.capacity(),
        "files": stats["files"],
        "bytes_stored": stats["bytes"],
        "wal_seq": stats["wal_seq"],
        "pending_intents": stats["pending_intents"],
        "max_upload_bytes": store.config.max_upload_bytes,
        "files_by_retention": stats.get("by_retention", {}),
        "group_commit": {"batches": committer.batches, "uploads": committer.uploads,
                         "largest_batch": committer.largest_batch,
                         "queue_depth": store.committer.queue_depth()},
        "index_lag": svc.index.lag() if svc.index is not None else None,
        "recovery": store.recovery_report,
    }


@requires(R.USER, R.STORAGE_READ)
async def get_element(request: web.Request) -> web.Response:
    svc = services(request)
    return json_response(await blocking(element_info, svc))


@requires(R.ADMIN, R.ADMIN_WRITE)
async def put_mode(request: web.Request) -> web.Response:
    svc = services(request)
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("mode"), str):
        raise ValidationError('send {"mode": "rw|ro|ar", "confirm": false}',
                              code="invalid_mode")
    confirm = body.get("confirm", False)
    if not isinstance(confirm, bool):
        raise ValidationError("confirm must be true or false", code="invalid_mode")
    await blocking(svc.store.set_mode, body["mode"], actor_of(request), confirm=confirm)
    return json_response(await blocking(element_info, svc))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v1/element", get_element)
    router.add_put("/api/v1/element/mode", put_mode)
