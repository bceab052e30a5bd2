"""A streaming ``multipart/form-data`` reader (RFC 7578) that never copies file content.

aiohttp's own reader joins each chunk to the previous one to look for the boundary, which
copies every byte twice. This one hands out ``memoryview`` slices of the buffers the socket
delivered: the only copies of file content are the kernel's. Only a delimiter that straddles
two buffers costs a few dozen copied bytes.

Errors are BadRequest with code ``malformed_multipart`` (truncated body, missing boundary,
oversized part headers, a part without a name).
"""

from __future__ import annotations

from dataclasses import dataclass

import urllib.parse

from ..engine.errors import BadRequest, ValidationError

MAX_HEADER_BYTES = 16 * 1024
MAX_PARTS = 32


def malformed(detail: str) -> BadRequest:
    return BadRequest(f"malformed multipart body: {detail}", code="malformed_multipart")


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str | None
    headers: dict[str, str]


def parse_disposition(header: str) -> tuple[str, dict[str, str]]:
    """(type, params) of a Content-Disposition header (RFC 6266, RFC 7578 §4.2).

    Quoted values keep every character (only ``\\"`` and ``\\\\`` are unescaped): a
    filename is recorded exactly as sent. ``name*=charset''value`` (RFC 8187) is decoded
    and wins over ``name``. Raises BadRequest for a header that does not parse.
    """
    kind, sep, rest = header.partition(";")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while sep and i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        if i >= n:
            break
        eq = rest.find("=", i)
        if eq < 0:
            raise malformed(f"bad Content-Disposition parameter {rest[i:i + 40]!r}")
        key = rest[i:eq].strip().lower()
        i = eq + 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            out = []
            i += 1
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n and rest[i + 1] in '"\\':
                    i += 1
                out.append(rest[i])
                i += 1
            if i >= n:
                raise malformed("unterminated quoted string in Content-Disposition")
            value = "".join(out)
            i += 1
        else:
            end = rest.find(";", i)
            end = n if end < 0 else end
            value = rest[i:end].strip()
            i = end
        if key.endswith("*"):
            charset, _, encoded = value.partition("'")
            _, _, encoded = encoded.partition("'")
            try:
                value = urllib.parse.unquote(encoded, encoding=charset or "utf-8",
                                             errors="strict")
            except (LookupError, UnicodeDecodeError):
                raise ValidationError(f"{key[:-1]} is not valid {charset or 'utf-8'}",
                                      code="invalid_filename") from None
        params[key] = value
    for key in [k for k in params if k.endswith("*")]:
        params[key[:-1]] = params.pop(key)
    return kind.strip().lower(), params


def boundary_of(content_type_header: str) -> bytes:
    """The boundary parameter of a multipart/form-data Content-Type."""
    for param in content_type_header.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if not 1 <= len(value) <= 70 or not value.isascii():
                raise malformed("boundary must be 1-70 ASCII characters")
            return value.encode("latin-1")
    raise malformed("Content-Type has no boundary")


class MultipartStream:
    """Reads parts from an aiohttp StreamReader; one part at a time, in order."""

    def __init__(self, content, boundary: bytes):
        self._content = content
        self._dash_boundary = b"--" + boundary
        self._delimiter = b"\r\n--" + boundary
        self._buf = b""
        self._started = False
        self._finished = False
        self._in_body = False
        self._parts = 0
        self.bytes_read = 0

    async def _more(self) -> bytes:
        data = await self._content.readany()
        if not data:
            raise malformed("body ended before the closing boundary")
        self.bytes_read += len(data)
        return data

    async def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            self._buf += await self._more()

    async def next_part(self) -> Part | None:
        """The next part's headers, or None after the closing boundary. The previous
        part's body must have been consumed (``read_all``/``iter_body``) or it is skipped."""
        if self._finished:
            return None
        if self._in_body:
            async for _ in self.iter_body():
                pass
        if not self._started:
            await self._skip_preamble()
            self._started = True
        # After a delimiter: "--" closes, otherwise optional padding then CRLF.
        await self._fill(2)
        if self._buf.startswith(b"--"):
            self._finished = True
            return None
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                break
            if len(self._buf) > 256:
                raise malformed("no line break after a boundary")
            self._buf += await self._more()
        if self._buf[:end].strip(b" \t"):
            raise malformed("unexpected text after a boundary")
        self._buf = self._buf[end + 2:]
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise malformed(f"more than {MAX_PARTS} parts")
        part = await self._read_headers()
        self._in_body = True
        return part

    async def _skip_preamble(self) -> None:
        while True:
            if self._buf.startswith(self._dash_boundary):
                self._buf = self._buf[len(self._dash_boundary):]
                return
            i = self._buf.find(self._delimiter)
            if i >= 0:
                self._buf = self._buf[i + len(self._delimiter):]
                return
            if len(self._buf) > MAX_HEADER_BYTES:
                raise malformed("no opening boundary")
            self._buf += await self._more()

    async def _read_headers(self) -> Part:
        while True:
            if self._buf.startswith(b"\r\n"):  # a part with no headers
                end, self._buf = 0, self._buf[2:]
                raw = b""
                break
            end = self._buf.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES + 4)
            if end >= 0:
                raw, self._buf = self._buf[:end], self._buf[end + 4:]
                break
            if len(self._buf) > MAX_HEADER_BYTES:
                raise malformed(f"part headers larger than {MAX_HEADER_BYTES} bytes")
            self._buf += await self._more()
        headers: dict[str, str] = {}
        for line in raw.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if not sep or not name.strip():
                raise malformed(f"bad part header line {line[:60]!r}")
            # RFC 7578 §5.1: field values may be UTF-8; header names are ASCII.
            headers[name.strip().decode("latin-1").lower()] = \
                value.strip().decode("utf-8", errors="surrogateescape")
        disposition = headers.get("content-disposition")
        if not disposition:
            raise malformed("a part has no Content-Disposition")
        kind, params = parse_disposition(disposition)
        if kind != "form-data" or not params.get("name"):
            raise malformed("a part is not form-data with a name")
        cte = headers.get("content-transfer-encoding", "binary").lower()
        if cte not in ("binary", "8bit", "7bit"):
            raise ValidationError(f"Content-Transfer-Encoding {cte} is not supported; "
                                  "send the bytes as they are", code="unsupported_encoding")
        filename = params.get("filename")
        if filename is not None and any("\udc80" <= c <= "\udcff" for c in filename):
            raise ValidationError("filename is not valid UTF-8", code="invalid_filename")
        return Part(name=params["name"], filename=filename,
                    content_type=headers.get("content-type"), headers=headers)

    async def iter_body(self):
        """Yield the current part's content as memoryview slices, without copying."""
        delim = self._delimiter
        keep = len(delim) - 1
        buf = self._buf
        self._buf = b""
        while True:
            if not buf:
                buf = await self._more()
            i = buf.find(delim)
            if i >= 0:
                if i:
                    yield memoryview(buf)[:i]
                self._buf = buf[i + len(delim):]
                self._in_body = False
                return
            # No delimiter in buf; one may start in its last `keep` bytes.
            cut = max(0, len(buf) - keep)
            if cut:
                yield memoryview(buf)[:cut]
            tail = buf[cut:]
            more = await self._more()
            if len(more) < keep:
                # Too short to rule out a delimiter starting in tail: look again, joined.
                buf = tail + more
                continue
            probe = tail + more[:keep]
            j = probe.find(delim)
            if 0 <= j < len(tail):
                if j:
                    yield memoryview(tail)[:j]
                self._buf = more[j + len(delim) - len(tail):]
                self._in_body = False
                return
            if tail:
                yield memoryview(tail)
            buf = more

    async def read_all(self, limit: int) -> bytes:
        """The current part's whole content; ValidationError past ``limit`` bytes."""
        out = bytearray()
        async for piece in self.iter_body():
            out += piece
            if len(out) > limit:
                raise ValidationError(f"a form field is larger than {limit} bytes",
                                      code="field_too_large")
        return bytes(out)
