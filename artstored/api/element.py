"""``/api/v1/element``: this storage element's mode, capacity and counters; mode changes;
background jobs (``/api/v1/element/{gc,rebuild}``, ``/api/v1/jobs/{id}``)."""

from __future__ import annotations

from aiohttp import web

from ..auth import roles as R
from ..engine import retention
from ..engine.errors import Conflict, NotFound, ValidationError
from ..engine.rebuild import rebuild_catalog
from .app import CLAIMS, actor_of, requires
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


def _start_job(request: web.Request, kind: str, fn) -> web.Response:
    svc = services(request)
    if any(job.kind == kind for job in svc.jobs.running()):
        raise Conflict(f"a {kind} job is already running", code="job_running")
    job = svc.jobs.start(kind, request[CLAIMS].sub, fn)
    return json_response(job.as_dict(), status=202,
                         headers={"Location": f"/api/v1/jobs/{job.id}"})


@requires(R.OPERATOR, R.STORAGE_WRITE)
async def start_gc(request: web.Request) -> web.Response:
    store = services(request).store
    return _start_job(request, "gc",
                      lambda progress: retention.collect_expired(store, progress=progress))


@requires(R.OPERATOR, R.STORAGE_WRITE)
async def start_rebuild(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    return _start_job(request, "rebuild",
                      lambda progress: rebuild_catalog(svc.store, progress=progress,
                                                       actor=actor))


@requires(R.OPERATOR, R.STORAGE_WRITE)
async def start_reindex(request: web.Request) -> web.Response:
    svc = services(request)
    return _start_job(request, "reindex",
                      lambda progress: svc.index.reindex(progress=progress))


@requires(R.OPERATOR, R.STORAGE_READ)
async def get_job(request: web.Request) -> web.Response:
    job = services(request).jobs.get(request.match_info["job_id"])
    if job is None:
        raise NotFound("no such job (jobs are kept in memory until restart)",
                       code="job_not_found")
    return json_response(job.as_dict())


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v1/element", get_element)
    router.add_put("/api/v1/element/mode", put_mode)
    router.add_post("/api/v1/element/gc", start_gc)
    router.add_post("/api/v1/element/rebuild", start_rebuild)
    router.add_post("/api/v1/element/reindex", start_reindex)
    router.add_get("/api/v1/jobs/{job_id}", get_job)
