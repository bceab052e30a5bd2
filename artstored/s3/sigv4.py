"""AWS Signature Version 4 (the S3 flavour): verification of the header and presigned-URL
forms, and of ``aws-chunked`` chunk signatures. Pure: strings and bytes in, a verdict out.

The canonical request is rebuilt from the decoded path and query and re-encoded by AWS's
rules (RFC 3986 unreserved characters kept, everything else %XX; S3 encodes a path once and
keeps ``/``), so a client that escapes differently on the wire still verifies. Signatures
are compared in constant time. HMAC-SHA256 and SHA-256 come from the standard library.

Every failure is an ``S3AuthError`` carrying the S3 error code a client expects.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING = (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_SKEW = timedelta(minutes=15)
MAX_PRESIGN_SECONDS = 7 * 86400
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# x-amz-* headers a client may send without signing them: the payload mode (bound by the
# canonical request itself) and tracing. Any other unsigned x-amz-* header is refused: it
# could change what a signed (or presigned) request does, e.g. turn a PUT into a copy.
UNSIGNED_OK = {"x-amz-content-sha256", "x-amz-decoded-content-length", "x-amzn-trace-id",
               "x-amz-user-agent", "amz-sdk-invocation-id", "amz-sdk-request"}
_CRED_RE = re.compile(r"^([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request$")


class S3AuthError(Exception):
    def __init__(self, code: str, message: str, status: int = 403):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass
class SignedRequest:
    """What a verified signature established: who signed, and how the payload is bound."""
    access_key_id: str
    date: str              # yyyymmdd of the credential scope
    amz_date: str          # the request's time stamp (yyyymmddThhmmssZ)
    scope: str             # date/region/s3/aws4_request
    signature: str
    payload: str           # x-amz-content-sha256 (a hex digest, UNSIGNED-PAYLOAD, STREAMING-*)
    signing_key: bytes = b""


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


@functools.lru_cache(maxsize=1024)
def signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    """The day's key (four HMACs); kept for the day's later requests."""
    key = _hmac(("AWS4" + secret).encode("utf-8"), date)
    return _hmac(_hmac(_hmac(key, region), service), "aws4_request")


_UNRESERVED = re.compile(r"^[A-Za-z0-9\-_.~]*$")


@functools.lru_cache(maxsize=8192)
def _encode(text: str, safe: str = "") -> str:
    # Cached: a client sends the same names, credential scopes and keys again and again.
    if _UNRESERVED.match(text):
        return text
    return urllib.parse.quote(text, safe="-_.~" + safe)


def _unquote(text: str) -> str:
    return urllib.parse.unquote(text) if "%" in text else text


def parse_query(raw_query: str) -> list[tuple[str, str]]:
    """Decoded (name, value) pairs in order; ``+`` stays a plus (AWS clients send %20)."""
    pairs = []
    for part in raw_query.split("&") if raw_query else ():
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((_unquote(name), _unquote(value)))
    return pairs


def canonical_query(pairs: list[tuple[str, str]]) -> str:
    encoded = sorted((_encode(k), _encode(v)) for k, v in pairs)
    return "&".join(f"{k}={v}" for k, v in encoded)


def canonical_headers(headers, names: list[str]) -> str:
    lines = []
    for name in names:
        values = headers.getall(name, None) if hasattr(headers, "getall") else \
            [headers[name]] if name in headers else None
        if values is None:
            raise S3AuthError("AccessDenied", f"signed header {name} is missing")
        if len(values) > 1:
            # One signature would cover "a,b" and two headers a / b, read differently.
            raise S3AuthError("InvalidArgument", f"header {name} is repeated", 400)
        lines.append(name + ":" + " ".join(values[0].split()) + "\n")
    return "".join(lines)


def check_unsigned(headers, signed: list[str]) -> None:
    """AccessDenied if an ``x-amz-*`` header the signature does not cover came with the
    request (S3's own rule: "There were headers present in the request which were not
    signed")."""
    covered = set(signed)
    for name in headers:
        lower = name.lower()
        if lower.startswith("x-amz-") and lower not in covered and lower not in UNSIGNED_OK:
            raise S3AuthError("AccessDenied", "There were headers present in the request "
                              f"which were not signed: {lower[:60]}")


def canonical_request(method: str, path: str, pairs, headers, signed: list[str],
                      payload: str) -> str:
    return "\n".join((method, _encode(path, "/"), canonical_query(pairs),
                      canonical_headers(headers, signed), ";".join(signed), payload))


def string_to_sign(amz_date: str, scope: str, request_text: str) -> str:
    return "\n".join((ALGORITHM, amz_date, scope,
                      hashlib.sha256(request_text.encode("utf-8")).hexdigest()))


_AMZ_DATE = re.compile(r"^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$", re.ASCII)


def _parse_time(amz_date: str) -> datetime:
    m = _AMZ_DATE.match(amz_date or "")
    try:
        if m is None:
            raise ValueError
        return datetime(*map(int, m.groups()), tzinfo=timezone.utc)
    except ValueError:
        raise S3AuthError("AccessDenied", f"X-Amz-Date {str(amz_date)[:30]!r} is not "
                          "yyyymmddThhmmssZ") from None


def _parse_credential(credential: str, region: str) -> tuple[str, str, str]:
    m = _CRED_RE.match(credential or "")
    if not m:
        raise S3AuthError("AuthorizationHeaderMalformed",
                          "the Credential must be <key>/<date>/<region>/s3/aws4_request",
                          400)
    key, date, cred_region, service = m.groups()
    if service != "s3":
        raise S3AuthError("AuthorizationHeaderMalformed",
                          f"the credential names service {service!r}; expected 's3'", 400)
    if cred_region != region:
        raise S3AuthError("AuthorizationHeaderMalformed",
                          f"the region {cred_region!r} is wrong; expecting {region!r}", 400)
    return key, date, f"{date}/{region}/s3/aws4_request"


def parse_header(authorization: str, headers, region: str) -> tuple[SignedRequest, list[str]]:
    """The parts of an ``Authorization: AWS4-HMAC-SHA256 ...`` header (not yet verified)."""
    scheme, _, rest = authorization.partition(" ")
    if scheme != ALGORITHM:
        raise S3AuthError("InvalidArgument" if scheme else "AccessDenied",
                          "only AWS4-HMAC-SHA256 (Signature Version 4) is supported", 400)
    fields = {}
    for item in rest.split(","):
        name, _, value = item.strip().partition("=")
        fields[name] = value
    for needed in ("Credential", "SignedHeaders", "Signature"):
        if not fields.get(needed):
            raise S3AuthError("AuthorizationHeaderMalformed", f"{needed} is missing", 400)
    key, date, scope = _parse_credential(fields["Credential"], region)
    amz_date = headers.get("x-amz-date") or ""
    if not amz_date:
        raise S3AuthError("AccessDenied", "X-Amz-Date is missing")
    if amz_date[:8] != date:
        raise S3AuthError("SignatureDoesNotMatch",
                          "the credential's date is not the request's date")
    payload = headers.get("x-amz-content-sha256") or ""
    if not payload:
        raise S3AuthError("InvalidRequest", "x-amz-content-sha256 is missing", 400)
    if payload not in (UNSIGNED, *STREAMING) and not _HEX64.match(payload):
        raise S3AuthError("InvalidArgument",
                          "x-amz-content-sha256 must be a hex SHA-256 or a known mode", 400)
    signed = fields["SignedHeaders"].split(";")
    if "host" not in signed:
        raise S3AuthError("AccessDenied", "the host header must be signed")
    return SignedRequest(key, date, amz_date, scope, fields["Signature"].lower(),
                         payload), signed


def verify_header(method: str, path: str, pairs, headers, region: str, secret_of, *,
                  now: datetime) -> SignedRequest:
    """Verify a header-signed request. ``secret_of(access_key_id)`` gives the secret or
    None. Returns the SignedRequest (with its signing key, for chunk signatures)."""
    parsed, signed = parse_header(headers.get("Authorization", ""), headers, region)
    moment = _parse_time(parsed.amz_date)
    if abs(now - moment) > MAX_SKEW:
        raise S3AuthError("RequestTimeTooSkewed",
                          "the difference between the request time and the server's "
                          "time is too large")
    return _check(parsed, method, path, pairs, headers, signed, region, secret_of)


def verify_presigned(method: str, path: str, pairs, headers, region: str, secret_of, *,
                     now: datetime) -> SignedRequest:
    """Verify a presigned URL (``X-Amz-Signature`` in the query)."""
    query = dict(pairs)
    if query.get("X-Amz-Algorithm") != ALGORITHM:
        raise S3AuthError("AuthorizationQueryParametersError",
                          "X-Amz-Algorithm must be AWS4-HMAC-SHA256", 400)
    key, date, scope = _parse_credential(query.get("X-Amz-Credential", ""), region)
    amz_date = query.get("X-Amz-Date", "")
    moment = _parse_time(amz_date)
    try:
        expires = int(query.get("X-Amz-Expires", ""))
    except ValueError:
        raise S3AuthError("AuthorizationQueryParametersError",
                          "X-Amz-Expires must be a number of seconds", 400) from None
    if not 1 <= expires <= MAX_PRESIGN_SECONDS:
        raise S3AuthError("AuthorizationQueryParametersError",
                          f"X-Amz-Expires must be 1-{MAX_PRESIGN_SECONDS}", 400)
    if now > moment + timedelta(seconds=expires):
        raise S3AuthError("AccessDenied", "Request has expired")
    if moment - now > MAX_SKEW:
        raise S3AuthError("AccessDenied", "Request is not valid yet")
    if amz_date[:8] != date:
        raise S3AuthError("SignatureDoesNotMatch",
                          "the credential's date is not the request's date")
    signed = query.get("X-Amz-SignedHeaders", "").split(";")
    if "host" not in signed:
        raise S3AuthError("AccessDenied", "the host header must be signed")
    parsed = SignedRequest(key, date, amz_date, scope,
                           query.get("X-Amz-Signature", "").lower(), UNSIGNED)
    rest = [(k, v) for k, v in pairs if k != "X-Amz-Signature"]
    return _check(parsed, method, path, rest, headers, signed, region, secret_of)


def _check(parsed: SignedRequest, method, path, pairs, headers, signed, region,
           secret_of) -> SignedRequest:
    if not _HEX64.match(parsed.signature):
        raise S3AuthError("SignatureDoesNotMatch", "the signature is not 64 hex digits")
    signed = [name.lower() for name in signed]
    secret = secret_of(parsed.access_key_id)
    if secret is None:
        raise S3AuthError("InvalidAccessKeyId",
                          "the access key id does not exist in our records")
    request_text = canonical_request(method, path, pairs, headers, signed, parsed.payload)
    key = signing_key(secret, parsed.date, region)
    expected = hmac.new(key, string_to_sign(parsed.amz_date, parsed.scope,
                                            request_text).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), parsed.signature.encode()):
        raise S3AuthError("SignatureDoesNotMatch",
                          "the request signature we calculated does not match the "
                          "signature you provided; check your key and signing method")
    check_unsigned(headers, signed)
    parsed.signing_key = key
    return parsed


def same(a: str, b: str) -> bool:
    """Constant-time equality of two signatures (any text; False if either is not ASCII)."""
    try:
        return hmac.compare_digest(a.encode("ascii"), b.encode("ascii"))
    except UnicodeEncodeError:
        return False


def chunk_signature(signed: SignedRequest, previous: str, chunk_sha256: str) -> str:
    """The signature of one aws-chunked chunk, chained to the one before it."""
    text = "\n".join(("AWS4-HMAC-SHA256-PAYLOAD", signed.amz_date, signed.scope, previous,
                      EMPTY_SHA256, chunk_sha256))
    return hmac.new(signed.signing_key, text.encode(), hashlib.sha256).hexdigest()


def trailer_signature(signed: SignedRequest, previous: str, trailer: bytes) -> str:
    text = "\n".join(("AWS4-HMAC-SHA256-TRAILER", signed.amz_date, signed.scope, previous,
                      hashlib.sha256(trailer).hexdigest()))
    return hmac.new(signed.signing_key, text.encode(), hashlib.sha256).hexdigest()
