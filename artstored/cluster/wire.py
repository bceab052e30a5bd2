"""What travels between daemons besides the gossip: paths, headers, and the signed
envelope carried in a request header (for requests whose body is a file)."""

from __future__ import annotations

import base64

from ..replication import envelope as E

HEADER = "X-ArtStore-Envelope"     # a signed request, base64url, for GET and file PUTs
ATTR_HEADER = "X-ArtStore-Attr"    # a file's attr record (JSON, base64url) with its bytes
OBJECTS = "/cluster/v1/objects/"
CHANGES = "/cluster/v1/changes"
BUNDLE = "/cluster/v1/bundle"
HAVE = "/cluster/v1/have"
DIGEST = "/cluster/v1/digest"
CONNECT_SECONDS = 3.0              # a peer that does not accept a connection this fast is down


def encode_header(blob: bytes) -> str:
    return base64.urlsafe_b64encode(blob).decode("ascii")


def decode_header(text: str) -> bytes:
    """The envelope or attr bytes in a header; MalformedEnvelope if not base64url."""
    try:
        return base64.urlsafe_b64decode(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise E.MalformedEnvelope(f"{HEADER} is not base64url") from None
