"""An S3 request body, read as it arrives: plain or ``aws-chunked``, with every checksum the
client declared checked before the caller commits anything.

``pieces()`` yields the decoded bytes. Once it has finished, ``verify()`` raises S3Error if
the body does not match what was signed or declared: ``x-amz-content-sha256`` (a hex digest),
each chunk's signature (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``), ``Content-MD5`` and
``x-amz-checksum-crc32``/``-sha1`` (header or trailer). ``x-amz-checksum-sha256`` is handed to
the engine as the declared SHA-256 (``declared_sha256``), which it checks itself. A caller
that gets an error aborts its upload writer: nothing of the body is kept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib

from . import sigv4
from .xml import S3Error

MAX_CHUNK_HEADER = 4096
MAX_CHUNK_BYTES = 16 << 20     # clients send 8-64 KiB chunks; a chunk is held whole to check it
_CHECKSUMS = ("x-amz-checksum-crc32", "x-amz-checksum-sha1", "x-amz-checksum-sha256")
_UNSUPPORTED = ("x-amz-checksum-crc32c", "x-amz-checksum-crc64nvme")


def _b64(value: str, size: int, name: str) -> bytes:
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != size:
        raise S3Error("InvalidDigest" if name == "Content-MD5" else "InvalidRequest",
                      f"{name} is not a base64 digest of {size} bytes")
    return raw


class Body:
    def __init__(self, request, signed: sigv4.SignedRequest, max_bytes: int, *,
                 hash_here: bool = False):
        """``hash_here``: compute the SHA-256 that ``x-amz-content-sha256`` names here;
        otherwise the caller passes it to ``verify`` (the engine's upload writer computes it
        anyway, in a worker thread: no second hash of every byte on the event loop)."""
        self.request = request
        self.signed = signed
        self.max_bytes = max_bytes
        headers = request.headers
        for name in _UNSUPPORTED:
            if name in headers or name in headers.get("x-amz-trailer", "").lower():
                raise S3Error("InvalidRequest", f"{name} is not supported here; use "
                              "x-amz-checksum-crc32, -sha1 or -sha256")
        self.declared = {n: headers[n] for n in _CHECKSUMS if n in headers}
        md5 = headers.get("Content-MD5")
        self.md5 = hashlib.md5() if md5 is not None else None
        self.md5_expected = _b64(md5, 16, "Content-MD5") if md5 is not None else None
        trailer = headers.get("x-amz-trailer", "").strip().lower()
        self.announced = {t.strip() for t in trailer.split(",") if t.strip()}
        unknown = self.announced - set(_CHECKSUMS)
        if unknown:
            raise S3Error("InvalidRequest", f"unsupported trailer {sorted(unknown)[0][:60]}")
        wanted = set(self.declared) | self.announced
        self.crc32 = 0 if "x-amz-checksum-crc32" in wanted else None
        self.sha1 = hashlib.sha1() if "x-amz-checksum-sha1" in wanted else None
        self.content_sha256 = hashlib.sha256() \
            if hash_here and len(signed.payload) == 64 else None
        self.chunked = signed.payload in sigv4.STREAMING
        self.size = 0
        self.trailers: dict[str, str] = {}
        if self.chunked:
            raw = headers.get("x-amz-decoded-content-length")
            if raw is None or not (raw.isascii() and raw.isdigit()):
                raise S3Error("MissingContentLength",
                              "an aws-chunked body needs x-amz-decoded-content-length", 411)
            self.expected_size = int(raw)
        else:
            if request.content_length is None:
                raise S3Error("MissingContentLength", "send a Content-Length", 411)
            self.expected_size = request.content_length
        if self.expected_size > max_bytes:
            raise S3Error("EntityTooLarge", f"an object of {self.expected_size} bytes exceeds "
                          f"the limit of {max_bytes} bytes")

    def _take(self, piece) -> None:
        self.size += len(piece)
        if self.size > self.expected_size:
            raise S3Error("IncompleteBody", f"the body is longer than the "
                          f"{self.expected_size} bytes announced")
        if self.md5 is not None:
            self.md5.update(piece)
        if self.crc32 is not None:
            self.crc32 = zlib.crc32(piece, self.crc32)
        if self.sha1 is not None:
            self.sha1.update(piece)
        if self.content_sha256 is not None:
            self.content_sha256.update(piece)

    async def pieces(self):
        if not self.chunked:
            async for piece in self.request.content.iter_any():
                self._take(piece)
                yield piece
            return
        async for piece in self._chunks():
            yield piece

    async def _line(self) -> bytes:
        content = self.request.content
        try:
            line = await content.readuntil(b"\n")
        except ValueError:
            raise S3Error("IncompleteBody", "an aws-chunked header line is too long") \
                from None
        if not line.endswith(b"\r\n") or len(line) > MAX_CHUNK_HEADER:
            raise S3Error("IncompleteBody", "the aws-chunked body ended early or is "
                          "malformed")
        return line[:-2]

    async def _chunks(self):
        content = self.request.content
        signed = self.signed.payload in (sigv4.STREAMING_SIGNED,
                                         sigv4.STREAMING_SIGNED_TRAILER)
        previous = self.signed.signature
        while True:
            header = (await self._line()).decode("latin-1")
            size_text, _, ext = header.partition(";")
            try:
                size = int(size_text.strip(), 16)
            except ValueError:
                raise S3Error("IncompleteBody", "an aws-chunked chunk size is not hex") \
                    from None
            if size < 0 or self.size + size > self.expected_size or size > MAX_CHUNK_BYTES:
                raise S3Error("IncompleteBody", "an aws-chunked chunk goes past the announced "
                              f"length or is over {MAX_CHUNK_BYTES} bytes")
            try:
                data = await content.readexactly(size) if size else b""
            except Exception:
                raise S3Error("IncompleteBody", "the aws-chunked body ended early") from None
            if signed:
                name, _, given = ext.strip().partition("=")
                expected = sigv4.chunk_signature(self.signed, previous,
                                                 hashlib.sha256(data).hexdigest())
                if name != "chunk-signature" or not sigv4.same(given.lower(), expected):
                    raise S3Error("SignatureDoesNotMatch",
                                  "a chunk's signature does not match", 403)
                previous = expected
            if size == 0:
                await self._trailer(previous)
                return
            if await content.readexactly(2) != b"\r\n":
                raise S3Error("IncompleteBody", "an aws-chunked chunk lacks its CRLF")
            self._take(data)
            yield data

    async def _trailer(self, previous: str) -> None:
        lines = []
        while True:
            try:
                line = await self._line()
            except S3Error:
                if self.request.content.at_eof() and not lines and not self.announced:
                    return        # no trailer section, and no final CRLF either
                raise
            if not line:
                break
            lines.append(line)
        trailer_sig = None
        signed_part = b""
        for line in lines:
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "x-amz-trailer-signature":
                trailer_sig = value.strip().lower()
            elif name in self.announced:
                self.trailers[name] = value.strip()
                signed_part += line + b"\n"
            else:
                raise S3Error("InvalidRequest", f"trailer {name[:60]} was not announced in "
                              "x-amz-trailer")
        missing = self.announced - set(self.trailers)
        if missing:
            raise S3Error("IncompleteBody", f"the announced trailer {sorted(missing)[0]} "
                          "did not come")
        if self.signed.payload == sigv4.STREAMING_SIGNED_TRAILER and self.trailers:
            if not sigv4.same(trailer_sig or "", sigv4.trailer_signature(
                    self.signed, previous, signed_part)):
                raise S3Error("SignatureDoesNotMatch", "the trailer's signature does not "
                              "match", 403)
        self.declared.update((k, v) for k, v in self.trailers.items() if k in _CHECKSUMS)

    def verify(self, sha256_hex: str | None = None) -> None:
        """Raise S3Error unless the body is what the client signed and declared.
        ``sha256_hex``: the body's SHA-256 (required unless made with ``hash_here``)."""
        if self.size != self.expected_size:
            raise S3Error("IncompleteBody", f"the body has {self.size} bytes; "
                          f"{self.expected_size} were announced")
        if self.content_sha256 is not None:
            sha256_hex = self.content_sha256.hexdigest()
        if len(self.signed.payload) == 64 and sha256_hex != self.signed.payload:
            raise S3Error("XAmzContentSHA256Mismatch", "the provided "
                          "x-amz-content-sha256 does not match what was computed")
        if self.md5 is not None and self.md5.digest() != self.md5_expected:
            raise S3Error("BadDigest", "the Content-MD5 you specified did not match what "
                          "we received")
        crc = self.declared.get("x-amz-checksum-crc32")
        if crc is not None and _b64(crc, 4, "x-amz-checksum-crc32") != \
                (self.crc32 or 0).to_bytes(4, "big"):
            raise S3Error("BadDigest", "the CRC32 you specified did not match the "
                          "calculated checksum")
        sha1 = self.declared.get("x-amz-checksum-sha1")
        if sha1 is not None and _b64(sha1, 20, "x-amz-checksum-sha1") != \
                self.sha1.digest():
            raise S3Error("BadDigest", "the SHA1 you specified did not match the "
                          "calculated checksum")

    def declared_sha256(self) -> str | None:
        value = self.declared.get("x-amz-checksum-sha256")
        return None if value is None else _b64(value, 32, "x-amz-checksum-sha256").hex()
