"""What every S3 handler can reach: who signed the request (``Caller``), what it names
(``Target``), and the answers shared by handlers (``answer_when_done``,
``not_implemented``). Set by ``app.s3_middleware`` before any handler runs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import urllib.parse
import xml.etree.ElementTree as ET

from aiohttp import web

from ..auth import roles as R
from ..engine.errors import ArtStoreError
from ..engine.wal import Actor
from . import sigv4
from .xml import NS, XML_TYPE, S3Error, element, fields, from_engine, response

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
