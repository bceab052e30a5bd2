"""RFC 9457 problem documents: the one place errors become HTTP responses.

Every error the API returns is ``application/problem+json`` with ``type``, ``title``,
``status``, ``detail`` and a stable ``code`` (plus members an error adds, such as ``mode``).
Engine errors carry their code and status; aiohttp's own HTTP errors (unknown route, wrong
method) are mapped here too, so nothing else leaves the server in another shape.
"""

from __future__ import annotations

from aiohttp import hdrs, web, web_urldispatcher
from aiohttp.http import HttpVersion11

from ..engine.errors import ArtStoreError
from .responses import json_response

CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:artstore:problem:"

_AIOHTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 408: "request_timeout",
    411: "length_required", 413: "request_too_large", 414: "uri_too_long",
    415: "unsupported_media_type", 431: "headers_too_large", 500: "internal_error",
}


def problem(status: int, code: str, title: str, detail: str | None = None,
            headers: dict | None = None, **extra) -> web.Response:
    body = {"type": TYPE_PREFIX + code, "title": title, "status": status,
            "detail": detail or title, "code": code}
    body.update({k: v for k, v in extra.items() if k not in body})
    return json_response(body, status=status, headers=headers, content_type=CONTENT_TYPE)


def from_error(exc: ArtStoreError) -> web.Response:
    headers = {}
    if exc.status == 401:
        # RFC 6750 §3: tell a Bearer client why.
        error = "invalid_token" if exc.code.startswith("token_") and \
            exc.code != "token_missing" else None
        headers["WWW-Authenticate"] = 'Bearer realm="artstore"' + \
            (f', error="{error}"' if error else "")
    if exc.code == "range_not_satisfiable" and "size" in exc.extra:
        headers["Content-Range"] = f"bytes */{exc.extra['size']}"
    if exc.status in (429, 503) and "retry_after" in exc.extra:
        headers["Retry-After"] = str(exc.extra["retry_after"])
    if exc.code == "unsupported_content_encoding":
        headers["Accept-Encoding"] = "identity"
    if exc.status == 403:
        headers["WWW-Authenticate"] = 'Bearer realm="artstore", error="insufficient_scope"'
    return problem(exc.status, exc.code, exc.title, exc.detail, headers=headers, **exc.extra)


def from_http_exception(exc: web.HTTPException) -> web.Response:
    code = _AIOHTTP_CODES.get(exc.status, f"http_{exc.status}")
    headers = {}
    if exc.status == 405 and "Allow" in exc.headers:
        headers["Allow"] = exc.headers["Allow"]
    detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else None
    return problem(exc.status, code, exc.reason, detail, headers=headers)


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """``Expect``: ``100-continue`` as aiohttp does it; anything else is 417 as a problem
    document. aiohttp's own answer echoes the value in a text body, which fails to encode
    (500, and a traceback) when the value is not UTF-8."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version != HttpVersion11:
        return None
    if expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
        return None
    response = problem(417, "expectation_failed", "Expectation failed",
                       f"only Expect: 100-continue is understood, not {expect[:40]!r}")
    response.force_close()  # the body, if any, is not read
    return response


# Every route (those 404 and 405 answer too) runs it: aiohttp calls a route's expect handler
# before any middleware, and takes this default when a route names none.
web_urldispatcher._default_expect_handler = expect_handler
