"""``GET``/``HEAD /api/v1/files/{id}/download``: content with Range, ETag and a UTF-8 name.

The ETag is the content's SHA-256 (content never changes, so it is a strong validator for
ever). ``If-None-Match`` → 304; ``If-Range`` with a different tag → the whole file; one
byte range per request (``bytes=a-b``, ``a-``, ``-n``) → 206, an unsatisfiable one → 416;
several ranges are answered with the whole file (RFC 9110 §14.2 allows ignoring Range).
The body goes out with ``sendfile``, so the daemon never holds a file in memory; a body of
at most 64 KiB is read and written with the headers instead (cheaper at that size).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import urllib.parse

from aiohttp import web

from ..engine.errors import PreconditionFailed, RangeNotSatisfiable, StoreCorrupt

_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE | re.ASCII)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single satisfiable range, None to send everything.

    Raises RangeNotSatisfiable for a well-formed range that does not fit ``size``. Malformed
    or multi-range headers are ignored (None), as RFC 9110 allows.
    """
    if not header:
        return None
    m = _RANGE_RE.match(header)
    if not m:
        return None
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":  # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(f"range {header.strip()} of a {size}-byte file",
                                      size=size)
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # invalid range-spec: ignore the header
    if start >= size:
        raise RangeNotSatisfiable(f"range {header.strip()} of a {size}-byte file", size=size)
    return start, min(end, size - 1)


def etag_of(attr: dict) -> str:
    return f'"{attr["checksum_sha256"]}"'


def _tag_matches(header: str, etag: str) -> bool:
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """RFC 6266: an ASCII fallback ``filename`` and the exact name in ``filename*``."""
    base = re.split(r"[/\\]", filename)[-1] or "download"
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\%' else "_" for c in base)
    encoded = urllib.parse.quote(filename, safe="")
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


# sendfile in slices of this size, asking the kernel to read the next slice ahead while the
# current one goes out: a cold file then streams at the disk's sequential speed instead of
# the default readahead's (128 KiB requests).
SLICE_BYTES = 16 << 20
# Bodies up to this size are read into memory and written with the headers (no sendfile).
SMALL_BODY_BYTES = 64 << 10


async def send_file_range(transport, fd: int, offset: int, count: int) -> None:
    """Send ``count`` bytes of file ``fd`` from ``offset`` on ``transport``'s socket with
    ``sendfile(2)``, from the event loop, waiting for room in the socket without blocking it.

    Works with any event loop (uvloop has no ``loop.sendfile`` for its transports): what
    the transport holds (the headers) is sent first, then the socket is written through a
    duplicate descriptor, watched for room on its own. Raises ConnectionResetError when the
    transport is closed meanwhile or the client takes nothing for SEND_STALL_SECONDS (it is
    let go as if it had left), StoreCorrupt when the file ends early. Like asyncio's own sendfile,
    a read of the file that misses the page cache blocks the loop for that read.
    """
    loop = asyncio.get_running_loop()
    pause = 0.001
    while transport.get_write_buffer_size():     # rare: the headers did not fit the socket
        _require_open(transport)
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.05)
    _require_open(transport)
    out = os.dup(transport.get_extra_info("socket").fileno())
    try:
        while count > 0:
            try:
                sent = os.sendfile(out, fd, offset, count)
            except BlockingIOError:
                await _room(loop, transport, out)
                continue
            if sent == 0:
                raise StoreCorrupt("a data file ended before its recorded size")
            offset += sent
            count -= sent
    finally:
        os.close(out)


SEND_STALL_SECONDS = 60.0     # a client that takes no byte for this long is let go
_CHECK_SECONDS = 1.0          # how often a wait for room looks whether the client left


def _require_open(transport) -> None:
    if transport.is_closing() or transport.get_extra_info("socket") is None:
        raise ConnectionResetError("client went away")


async def _room(loop, transport, out: int) -> None:
    """Until socket ``out`` takes more bytes; ConnectionResetError if the transport is
    closed meanwhile or after SEND_STALL_SECONDS."""
    deadline = loop.time() + SEND_STALL_SECONDS
    while True:
        room = loop.create_future()
        loop.add_writer(out, lambda: room.done() or room.set_result(None))
        try:
            await asyncio.wait_for(room, _CHECK_SECONDS)
            return
        except asyncio.TimeoutError:
            _require_open(transport)
            if loop.time() >= deadline:
                raise ConnectionResetError("the client took no data for "
                                           f"{SEND_STALL_SECONDS:.0f} s") from None
        finally:
            loop.remove_writer(out)


class ContentResponse(web.StreamResponse):
    """Sends a byte range of an open file with sendfile; closes the file when done."""

    def __init__(self, fobj, offset: int, count: int, **kwargs):
        super().__init__(**kwargs)
        self._fobj = fobj
        self._offset = offset
        self._count = count

    async def prepare(self, request):
        try:
            writer = await super().prepare(request)
            if request.method != "HEAD" and self._count > 0:
                transport = request.transport
                if transport is None:
                    raise ConnectionResetError("client went away")
                fd = self._fobj.fileno()
                offset, end = self._offset, self._offset + self._count
                while offset < end:
                    n = min(SLICE_BYTES, end - offset)
                    if offset + n < end:
                        os.posix_fadvise(fd, offset + n, min(SLICE_BYTES, end - offset - n),
                                         os.POSIX_FADV_WILLNEED)
                    await send_file_range(transport, fd, offset, n)
                    offset += n
                await super().write_eof()
            return writer
        finally:
            self._fobj.close()


def build_response(request: web.Request, attr: dict, fobj, *,
                   native_headers: bool = True) -> web.StreamResponse:
    """The response for ``fobj`` (an open data file, closed by the response or here).
    ``native_headers=False``: without the native API's Content-Disposition and
    Repr-Digest (the S3 endpoint sends its own headers)."""
    try:
        return _build(request, attr, fobj, native_headers)
    except BaseException:
        fobj.close()
        raise


def _build(request: web.Request, attr: dict, fobj,
           native_headers: bool) -> web.StreamResponse:
    size = int(attr["file_size"])
    etag = etag_of(attr)
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Type": attr.get("content_type") or "application/octet-stream",
        "Cache-Control": "private, no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    if native_headers:
        headers["Content-Disposition"] = content_disposition(attr["original_filename"])
        headers["Repr-Digest"] = "sha-256=:%s:" % base64.b64encode(
            bytes.fromhex(attr["checksum_sha256"])).decode("ascii")
    inm = request.headers.get("If-None-Match")
    if inm and _tag_matches(inm, etag):
        fobj.close()
        return web.Response(status=304, headers={"ETag": etag,
                                                 "Cache-Control": headers["Cache-Control"]})
    im = request.headers.get("If-Match")
    if im and not _tag_matches(im, etag):
        raise PreconditionFailed("the content's ETag does not match If-Match")
    span = None
    if_range = request.headers.get("If-Range")
    if if_range is None or if_range.strip() == etag:
        span = parse_range(request.headers.get("Range"), size)
    status, offset, count = 200, 0, size
    if span is not None:
        status, offset, count = 206, span[0], span[1] - span[0] + 1
        headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{size}"
    actual = os.fstat(fobj.fileno()).st_size
    if actual != size:
        raise StoreCorrupt(f"file {attr['file_id']} has {actual} bytes on disk, "
                           f"{size} in its record")
    if request.method != "HEAD" and count <= SMALL_BODY_BYTES:
        # Read here (the caller runs this in a worker thread) and sent with the headers in
        # one write: for a small body, sendfile's setup on the event loop costs more than
        # the copy it saves.
        try:
            data = os.pread(fobj.fileno(), count, offset)
        finally:
            fobj.close()
        if len(data) != count:
            raise StoreCorrupt(f"file {attr['file_id']} ended early on disk")
        return web.Response(status=status, headers=headers, body=data)
    if count and request.method != "HEAD":
        os.posix_fadvise(fobj.fileno(), offset, min(count, SLICE_BYTES),
                         os.POSIX_FADV_WILLNEED)
    response = ContentResponse(fobj, offset, count, status=status, headers=headers)
    response.content_length = count
    return response
