"""The S3 endpoint: an aiohttp application on its own listen address (``s3.listen``).

Its own address, not a path prefix of the native API: S3 clients sign and address the root
of an endpoint (``/bucket/key``), a prefix would make every bucket name a possible clash
with ``/api/...``, and an operator can firewall or proxy the two protocols apart. Requests
are path-style (``http://host:port/bucket/key``).

Every request is signed (AWS Signature Version 4, header or presigned URL) with an access
key of a service account (``artstore account s3-key create``): it acts as that account, with
its role and scopes as they are at that moment. Errors are S3 XML with S3's codes.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from aiohttp import web

from ..api.app import request_id_middleware
from ..api.state import SERVICES, Services
from ..engine.errors import ArtStoreError
from . import buckets, multipart, objects, sigv4
from .context import S3_CONTEXT, Caller, Target
from .xml import S3Error, error_response, from_engine

log = logging.getLogger("artstored.s3")


def _authenticate(request: web.Request, svc: Services, where: Target) -> Caller:
    if svc.cluster is not None and svc.cluster.doc is not None and \
            not svc.cluster.mints_tokens:
        # Accounts and keys live on the admin node; a member's local copies would not
        # follow a suspension or a role change made there.
        raise S3Error("ServiceUnavailable", "this node is a cluster member: use the S3 "
                      "endpoint of the cluster's admin node, where accounts and keys live",
                      503)
    keys = svc.s3_keys
    found = {}

    def secret_of(access_key_id: str):
        hit = keys.signing_secret(access_key_id)
        if hit is None:
            return None
        found["record"], found["account"], secret = hit
        return secret

    region = svc.config["s3.region"]
    now = datetime.now(timezone.utc)
    if "X-Amz-Signature" in where.query:
        signed = sigv4.verify_presigned(request.method, where.path, where.pairs,
                                        request.headers, region, secret_of, now=now)
    elif request.headers.get("Authorization"):
        signed = sigv4.verify_header(request.method, where.path, where.pairs,
                                     request.headers, region, secret_of, now=now)
    else:
        raise S3Error("AccessDenied", "anonymous access is not allowed: sign the request "
                      "(AWS Signature Version 4)", 403)
    account = found["account"]
    if not keys.account_active(account):
        raise S3Error("AccessDenied", f"the key's account is {account['status']}", 403)
    return Caller(account, signed)


@web.middleware
async def s3_middleware(request: web.Request, handler):
    svc: Services = request.app[SERVICES]
    where = None
    try:
        where = Target(request)
        if not svc.started or svc.s3_keys is None:
            raise S3Error("ServiceUnavailable", "the daemon is still starting", 503)
        if svc.stopping and request.method not in ("GET", "HEAD"):
            raise S3Error("ServiceUnavailable", "the daemon is shutting down; retry later",
                          503)
        request[S3_CONTEXT] = (_authenticate(request, svc, where), where)
        response = await handler(request)
    except sigv4.S3AuthError as exc:
        response = _error(request, where, S3Error(exc.code, exc.message, exc.status))
    except S3Error as exc:
        response = _error(request, where, exc)
    except ArtStoreError as exc:
        if exc.status >= 500:
            log.error("%s %s: %s", request.method, request.path, exc.detail)
        response = _error(request, where, from_engine(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error(request, where, S3Error(
            "MethodNotAllowed" if exc.status == 405 else "InvalidRequest", exc.reason,
            exc.status))
    except (ConnectionError, TimeoutError):
        raise
    except Exception:
        log.exception("unhandled error on S3 %s %s", request.method, request.path)
        response = _error(request, where, S3Error(
            "InternalError", "we encountered an internal error; the request id names it "
            "in the log", 500))
    if request.body_exists and not request.content.at_eof():
        response.force_close()    # an unread body: answer and close, never swallow it
    return response


def _error(request: web.Request, where: Target | None, exc: S3Error) -> web.Response:
    from ..api.app import REQUEST_ID
    return error_response(exc, where.resource if where else request.path,
                          request.get(REQUEST_ID, ""), head=request.method == "HEAD")


async def dispatch(request: web.Request) -> web.StreamResponse:
    where = request[S3_CONTEXT][1]
    method, query = request.method, where.query
    if where.bucket is None:
        if method in ("GET", "HEAD"):
            return await buckets.list_buckets(request)
        raise S3Error("MethodNotAllowed", "only GET is allowed on the service", 405)
    if where.key is None:
        handler = buckets.route(method, query)
    elif "uploadId" in query or "uploads" in query:
        handler = multipart.route(method, query)
    else:
        handler = objects.route(method, query, request.headers)
    return await handler(request)


def build_app(svc: Services) -> web.Application:
    app = web.Application(middlewares=[request_id_middleware, s3_middleware],
                          client_max_size=8 << 20)
    app[SERVICES] = svc
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app
