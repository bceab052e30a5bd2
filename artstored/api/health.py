"""Probes: ``/health/live`` (the process answers), ``/health/startup`` (recovery finished),
``/health/ready`` (serving: recovered, index open, not shutting down)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .app import public
from .responses import json_response
from .state import SERVICES, blocking


@public
async def live(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@public
async def startup(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    if svc.startup_error:
        return json_response({"status": "failed", "error": svc.startup_error}, status=503)
    return json_response({"status": "ok" if svc.started else "starting"},
                         status=200 if svc.started else 503)


@public
async def ready(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    if not svc.started:
        return json_response({"status": "starting"}, status=503)
    if svc.stopping:
        return json_response({"status": "stopping"}, status=503)
    return json_response({"status": "ready", "mode": svc.store.mode})


@public
async def metrics(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    body = await blocking(svc.metrics.render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/metrics", metrics)
    router.add_get("/health/live", live)
    router.add_get("/health/startup", startup)
    router.add_get("/health/ready", ready)
