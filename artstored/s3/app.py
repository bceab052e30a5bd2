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

import asyncio
import concurrent.futures
import contextvars
import logging
import urllib.parse
import xml.etree.ElementTree as ET
from datetime import datetime, timezone

from aiohttp import web

from ..api.app import request_id_middleware
from ..api.state import SERVICES, Services
from ..auth import roles as R
from ..engine.errors import ArtStoreError
from ..engine.wal import Actor
from . import sigv4
from .xml import (NS, XML_TYPE, S3Error, element, error_response, fields, from_engine,
                  response)

log = logging.getLogger("artstored.s3")

S3_CONTEXT = web.RequestKey("s3", object)


class Caller:
    """Who signed the request and what they may do."""

    def __init__(self, account: dict, signed: sigv4.SignedRequest):
        self.account = account
        self.signed = signed
        self.actor = Actor(account["client_id"], account["name"], account["role"])

    def need(self, scope: str) -> None:
        if not R.permits(self.account["role"], self.account["scopes"], R.USER, scope):
            raise S3Error("AccessDenied", f"the account's role and scopes do not include "
                          f"{scope}", 403)


class Target:
    """A request's bucket, key and query, decoded from the raw path (once)."""

    def __init__(self, request: web.Request):
        raw = request.rel_url.raw_path
        try:
            path = urllib.parse.unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise S3Error("InvalidURI", "the path is not valid UTF-8") from None
        self.path = path
        bucket, _, key = path.lstrip("/").partition("/")
        self.bucket = bucket or None
        self.key = key or None
        self.pairs = sigv4.parse_query(request.rel_url.raw_query_string)
        self.query = {k: v for k, v in self.pairs}

    @property
    def resource(self) -> str:
        return self.path


def caller(request: web.Request) -> Caller:
    return request[S3_CONTEXT][0]


def target(request: web.Request) -> Target:
    return request[S3_CONTEXT][1]


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
    from . import buckets, multipart, objects
    where = target(request)
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


# Completing a multipart upload and copying an object re-read and hash every byte: they run
# here, not in the daemon's shared pool, so a few large ones cannot starve other requests.
_LONG_WORK = concurrent.futures.ThreadPoolExecutor(max_workers=4,
                                                   thread_name_prefix="s3-long")
KEEPALIVE_SECONDS = 5.0
QUICK_SECONDS = 2.0


async def answer_when_done(request: web.Request, work, render,
                           after=None) -> web.StreamResponse:
    """Run ``work()`` (blocking) and answer ``render(result)`` → (XML root, headers). If it
    takes longer than a moment, answer 200 at once and send a space every few seconds
    until it is done, then the result, or an S3 Error document (as S3 itself does for
    CompleteMultipartUpload and CopyObject; clients read an Error inside a 200): a client's
    read timeout never cuts a long copy and makes it retry. ``after(result)``, if given, is
    awaited before the answer (the replication a cluster's ack asks for)."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    future = loop.run_in_executor(_LONG_WORK, context.run, work)
    done, _ = await asyncio.wait([future], timeout=QUICK_SECONDS)
    if done:
        result = future.result()
        if after is not None:
            await after(result)
        root, headers = render(result)
        return response(root, headers=headers)
    answer = web.StreamResponse(status=200, headers={"Content-Type": XML_TYPE})
    await answer.prepare(request)
    await answer.write(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    if after is not None:
        async def finish(working):
            result = await working
            await after(result)
            return result
        future = asyncio.ensure_future(finish(future))
    while not future.done():
        await asyncio.wait([future], timeout=KEEPALIVE_SECONDS)
        if not future.done():
            await answer.write(b" ")
    try:
        root, _ = render(future.result())
        root.set("xmlns", NS)
    except (S3Error, ArtStoreError) as exc:
        error = exc if isinstance(exc, S3Error) else from_engine(exc)
        root = element("Error")
        fields(root, Code=error.code, Message=error.message, Resource=target(request).path)
    except Exception:
        log.exception("S3 %s %s failed after its answer began", request.method, request.path)
        root = element("Error")
        fields(root, Code="InternalError", Message="we encountered an internal error")
    await answer.write(ET.tostring(root, encoding="unicode").encode("utf-8"))
    await answer.write_eof()
    return answer


def not_implemented(what: str):
    async def handler(request):
        raise S3Error("NotImplemented", f"{what} is not implemented by ArtStore", 501)
    return handler
