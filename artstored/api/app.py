"""The aiohttp application: routes, and the middlewares every request passes through.

Order: request id → problem mapping → authentication/authorisation. Every route declares
``@public`` or ``@requires(role, scope)``; a route that declares neither is refused (500)
rather than served unauthenticated, and a test walks the route table to keep it so.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .. import logs
from ..auth import roles as R
from ..engine.errors import ArtStoreError, Forbidden, Unauthorized
from ..engine.wal import Actor
from . import problems
from .state import SERVICES, Services

log = logging.getLogger("artstored.api")
access_log = logging.getLogger("artstored.access")

CLAIMS = web.RequestKey("claims", object)
REQUEST_ID = web.RequestKey("request_id", str)

_AUTH_ATTR = "__artstore_auth__"


def actor_of(request: web.Request) -> Actor:
    """Who is making this (authenticated) request, as the engine records it."""
    claims = request[CLAIMS]
    return Actor(claims.sub, claims.name, claims.role)


def public(handler):
    setattr(handler, _AUTH_ATTR, None)
    return handler


def requires(role: str, scope: str | None):
    def mark(handler):
        setattr(handler, _AUTH_ATTR, (role, scope))
        return handler
    return mark


def route_requirement(handler):
    """``None`` (public), ``(role, scope)``, or ``...`` when the handler declares nothing."""
    return getattr(handler, _AUTH_ATTR, ...)


# Request ids: a random prefix per process and a counter (unique in this process's logs,
# and across restarts by the prefix; no getrandom call on every request).
_ID_PREFIX = secrets.token_hex(4)
_ID_COUNTER = itertools.count(1)


def _safe_request_id(value: str | None) -> str:
    if value and len(value) <= 128 and value.isascii() and value.isprintable():
        return value
    return f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"


@web.middleware
async def request_id_middleware(request: web.Request, handler):
    rid = _safe_request_id(request.headers.get("X-Request-Id"))
    request[REQUEST_ID] = rid
    token = logs.REQUEST_ID.set(rid)  # every log line of this request carries it
    started = time.perf_counter()
    response = None
    svc: Services = request.app[SERVICES]
    svc.inflight_requests += 1
    try:
        response = await handler(request)
        if svc.stopping:
            response.force_close()
        return response
    finally:
        svc.inflight_requests -= 1
        if response is not None:
            response.headers["X-Request-Id"] = rid
        route = request.match_info.route.resource
        route_name = route.canonical if route is not None else "unmatched"
        status = getattr(response, "status", 500)
        seconds = time.perf_counter() - started
        bytes_in = request.content_length or 0
        bytes_out = getattr(response, "content_length", None) or 0
        # Gossip between daemons is several requests a second: debug, unless refused.
        level = logging.DEBUG if route_name.startswith("/cluster/") and status < 300 \
            else logging.INFO
        access_log.log(
            level, "%s %s %s", request.method, request.path, status,
            extra={"method": request.method, "route": route_name, "status": status,
                   "bytes_in": bytes_in, "bytes_out": bytes_out,
                   "duration_ms": round(seconds * 1000, 3)})
        if svc.metrics is not None:
            svc.metrics.observe_request(request.method, route_name, status, seconds,
                                        bytes_in, bytes_out)
        logs.REQUEST_ID.reset(token)


@web.middleware
async def problem_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except ArtStoreError as exc:
        response = problems.from_error(exc)
        if exc.status >= 500:
            log.error("%s %s: %s", request.method, request.path, exc.detail,
                      extra={"code": exc.code})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = problems.from_http_exception(exc)
    except BaseException as exc:
        # BaseException: a Rust panic in a native library (pyo3's PanicException) is one.
        if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit,
                            GeneratorExit)):
            raise
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = problems.problem(500, "internal_error", "Internal error",
                                    "the server failed; the request id names it in the log")
    if not _body_consumed(request):
        # The client may still be sending a body we will never read: answer now and close,
        # rather than swallowing gigabytes to keep the connection alive.
        response.force_close()
    return response


@web.middleware
async def content_encoding_middleware(request: web.Request, handler):
    """Request bodies are taken only as sent (``identity``): a compressed upload would be
    inflated past every size check, and documents arrive compressed already. Anything
    else is 415 (RFC 9110 §15.5.16) before a byte of the body is read."""
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding not in ("", "identity"):
        raise UnsupportedContentEncoding(
            f"request bodies are accepted without Content-Encoding, not {coding[:40]!r}",
            content_encoding=coding[:40])
    return await handler(request)


class UnsupportedContentEncoding(ArtStoreError):
    code = "unsupported_content_encoding"
    status = 415
    title = "Content-Encoding not accepted"


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs each request it cannot parse (a control character or an over-long line
    in a header, a broken body framing) with a full traceback at ERROR: a stream of garbage
    would bury the log. Such records become one line at INFO, at most ``per_second`` a
    second; the rest are only counted (``dropped``; /metrics shows ``malformed``)."""

    def __init__(self, per_second: float = 10.0):
        super().__init__()
        self.per_second = per_second
        self._allowance = per_second
        self._last = time.monotonic()
        self.malformed = 0
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        self.malformed += 1
        now = time.monotonic()
        self._allowance = min(self.per_second,
                              self._allowance + (now - self._last) * self.per_second)
        self._last = now
        if self._allowance < 1:
            self.dropped += 1
            return False
        self._allowance -= 1
        record.msg = "refused a malformed request: %s"
        record.args = (str(exc.message if hasattr(exc, "message") else exc)[:200],)
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


MALFORMED = MalformedRequestFilter()
logging.getLogger("aiohttp.server").addFilter(MALFORMED)


def _body_consumed(request: web.Request) -> bool:
    if not request.body_exists:
        return True
    return request.content.at_eof()


@web.middleware
async def auth_middleware(request: web.Request, handler):
    requirement = route_requirement(getattr(request.match_info, "handler", None))
    if requirement is ...:
        if isinstance(request.match_info, web.UrlMappingMatchInfo) and \
                request.match_info.http_exception is None:
            log.error("route %s declares no auth requirement", request.path)
            raise ArtStoreError("route has no access rule")
        return await handler(request)  # 404/405 from the router
    if requirement is None:
        return await handler(request)
    svc: Services = request.app[SERVICES]
    svc.require_ready()
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("send Authorization: Bearer <token>", code="token_missing")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("use the Bearer scheme", code="token_malformed")
    claims = svc.tokens.verify(token.strip())
    if not svc.token_allowed(claims):
        raise Unauthorized("token has been revoked (or its account is not active)",
                           code="token_revoked")
    role, scope = requirement
    if not R.permits(claims.role, claims.scopes, role, scope):
        raise Forbidden(f"needs role {role}" + (f" and scope {scope}" if scope else ""),
                        code="insufficient_scope", required_role=role, required_scope=scope)
    request[CLAIMS] = claims
    return await handler(request)


def build_app(svc: Services) -> web.Application:
    from . import (accounts, audit_routes, auth_routes, changes, cluster_routes, element, files,
                   health, jobs, openapi, search, sessions)

    app = web.Application(
        middlewares=[request_id_middleware, problem_middleware, content_encoding_middleware,
                     auth_middleware],
        client_max_size=svc.config["server.client_max_fields_bytes"],
    )
    app[SERVICES] = svc
    svc.malformed = MALFORMED
    for module in (health, auth_routes, files, sessions, element, jobs, accounts, search,
                   audit_routes, changes, cluster_routes, openapi):
        module.add_routes(app.router)
    return app
