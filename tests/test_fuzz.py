"""No input answers 5xx or logs a traceback: a property-based fuzz of every operation in the
OpenAPI document the daemon serves (tests/fuzzing.py builds the requests: hostile path
parameters, query parameters, headers, tokens and bodies), then a few requests that once
answered 500, kept as they were found.

A fixed seed (``derandomize``) and a bounded number of examples (about 2,800 requests, each
operation's share by how much it takes), so it runs in ``make test`` in well under a minute;
``python -m bench.fuzz`` runs the same fuzz far longer. A failure names the request
(Hypothesis prints the drawn ``Req``: method, target, headers, body) and the log lines it
caused.
"""

import json
import time
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings

import fuzzing as F
from artstored.api.openapi import DOCUMENT
from harness import SUMMARY, Daemon

SCALE = 1.0  # examples per unit of an operation's weight (40-205 each: about 2,800 in all)

OPERATIONS = [f"{m.upper()} {p}" for p, item in DOCUMENT["paths"].items()
              for m in item if m != "parameters"]


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    d = Daemon(str(tmp_path_factory.mktemp("fuzz") / "node"), config=F.DAEMON_CONFIG).start()
    t = F.prepare(d)
    t.stats["started"] = time.monotonic()
    yield t
    d.kill()


@pytest.mark.parametrize("name", OPERATIONS)
def test_no_5xx_and_no_traceback(target, name):
    ops = {op.name: op for op in F.operations(target.doc)}
    assert name in ops, f"{name} is not in the document the daemon serves"
    op = ops[name]

    @settings(max_examples=int(op.weight * SCALE), derandomize=True, database=None,
              deadline=None, print_blob=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much])
    @given(req=F.request(target, op))
    def fuzz(req):
        F.check(target, req)

    fuzz()


def _req(method: str, path: str, body: bytes | None = None, ctype: str | None = None,
         token: str | None = "admin", **headers) -> F.Req:
    return F.Req("regression", method, path.encode("latin-1"),
                 ([("Authorization", b"Bearer " + token.encode())] if token else [])
                 + ([("Content-Type", ctype.encode())] if ctype else [])
                 + [(k.replace("_", "-"), v if isinstance(v, bytes) else v.encode())
                    for k, v in headers.items()], body)


JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


def _form(**fields) -> bytes:
    return urllib.parse.urlencode(fields).encode()


# Each once answered 500 with a traceback (what broke, in the comment).
FOUND = {
    # a header that is not UTF-8, echoed in a problem's detail: the body failed to encode
    "content-encoding not utf-8": _req("GET", "/api/v1/files",
                                       Content_Encoding=b"\xed\xa0\x80"),
    # aiohttp's own 417 echoes Expect in a text body that cannot be encoded
    "expect not utf-8": _req("GET", "/api/v1/files", Expect=b"\x80*"),
    "expect not utf-8, unknown path": _req("GET", "/nowhere", token=None, Expect=b"\xff"),
    # the token endpoint's form in an unknown charset, or not in its charset
    "form charset unknown": _req("POST", "/api/v1/auth/token", _form(
        grant_type="client_credentials", client_id="x", client_secret="y"),
        FORM + "; charset=bogus", token=None),
    "form not utf-8": _req("POST", "/api/v1/auth/token",
                           b"grant_type=client_credentials&client_id=\xff&client_secret=\xfe",
                           FORM, token=None),
    # revocation by jti: LMDB refuses an empty or over-long key, UTF-8 a lone surrogate
    "revoke empty jti": _req("POST", "/api/v1/auth/revoke", b'{"jti": "", "client_id": ""}',
                             JSON),
    "revoke long jti": _req("POST", "/api/v1/auth/revoke",
                            json.dumps({"jti": "j" * 600, "client_id": "c"}).encode(), JSON),
    "revoke surrogate jti": _req("POST", "/api/v1/auth/revoke",
                                 b'{"jti": "\\ud800", "client_id": "c"}', JSON),
    # an escaped lone surrogate in JSON, stored in attr.json
    "patch surrogate": _req("PATCH", "/api/v1/files/{file_id}",
                            b'{"description": "\\ud800"}', "application/merge-patch+json"),
    # the same in an upload's custom_attributes field
    "upload surrogate": _req("POST", "/api/v1/files", (
        b'--b\r\nContent-Disposition: form-data; name="custom_attributes"\r\n\r\n'
        b'{"a": "\\ud800"}\r\n--b\r\nContent-Disposition: form-data; name="file"; '
        b'filename="a.txt"\r\n\r\nx\r\n--b--\r\n'), "multipart/form-data; boundary=b"),
    # a multipart boundary outside Latin-1
    "boundary not latin-1": _req("POST", "/api/v1/files", b"--\xf0\x9f\x98\x80--\r\n",
                                 "multipart/form-data; boundary=\xf0\x9f\x98\x80"),
    # times that cannot be moved to UTC
    "search time overflow": _req("GET",
                                 "/api/v1/search?created_from=0001-01-01T00:00:00%2B01:00"),
    "audit time overflow": _req("GET", "/api/v1/audit?to=9999-12-31T23:59:59-01:00"),
    # search cursors the index cannot hold: a 64-bit overflow, a Unicode digit
    "search cursor overflow": _req("GET", "/api/v1/search?cursor=kd" + "9" * 30),
    "search cursor edge": _req("GET", "/api/v1/search?order=asc&cursor=ka9223372036854775807"),
    "search cursor unicode digit": _req("GET", "/api/v1/search?q=a&cursor=rabc.%C2%B2"),
    # a range over the custom attributes: Tantivy parses it, then refuses to run it
    "search attr range": _req("GET", "/api/v1/search?q=attr.n%3A%5B0%20TO%205%5D"),
}


@pytest.mark.parametrize("name", sorted(FOUND))
def test_requests_that_once_answered_500(target, name):
    req = FOUND[name]
    req.target = req.target.replace(b"{file_id}", target.file_ids[0].encode())
    if req.headers and req.headers[0][1] == b"Bearer admin":
        req.headers[0] = ("Authorization", b"Bearer " + target.tokens["admin"].encode())
    answer = F.check(target, req)
    assert 400 <= answer.status < 500, (answer.status, answer.body[:300])


def test_signed_tokens_with_hostile_claims_are_401(target):
    """Claims only the issuer could sign (gen not a number, sub too long, times past 2**53)
    once reached int() or LMDB and answered 500."""
    now = int(time.time())
    base = {"iss": target.issuer, "sub": sorted(target.victims)[0], "name": "v",
            "role": "user", "scope": "files:read", "iat": now, "nbf": now, "exp": now + 600,
            "jti": "j1", "gen": 1}
    for change in ({"gen": "x"}, {"gen": [1]}, {"gen": 1.5}, {"sub": ""}, {"sub": "s" * 600},
                   {"sub": "\ud800"}, {"jti": ""}, {"exp": 10 ** 30}, {"iat": -1}):
        claims = dict(base, **change)
        header = F._b64url(F._dumps({"alg": "EdDSA", "typ": "JWT", "kid": target.kid}))
        signing_input = f"{header}.{F._b64url(F._dumps(claims))}"
        signature = target.key.sign(signing_input.encode()).signature
        token = f"{signing_input}.{F._b64url(signature)}"
        answer = F.check(target, F.Req("claims", "GET", b"/api/v1/files",
                                       [("Authorization", f"Bearer {token}".encode())], None))
        assert answer.status == 401, (change, answer.status, answer.body[:300])
        assert json.loads(answer.body)["code"] == "token_invalid", change


def test_the_whole_log_is_clean_and_the_fuzz_ran(target):
    """After every operation's examples: no traceback and no error anywhere in the log (also
    what was logged between requests), and the fuzz reached the handlers."""
    bad = F.log_problems(target.daemon.log_lines())
    assert not bad, bad[:5]
    stats = target.stats
    statuses = stats.get("statuses", {})
    expected = sum(int(op.weight * SCALE) for op in F.operations(target.doc))
    assert stats.get("requests", 0) >= expected // 2, stats
    # Valid tokens and well-formed requests got through, as well as refusals.
    assert sum(n for s, n in statuses.items() if isinstance(s, int) and s < 300) > 100, stats
    assert {400, 401, 403, 404, 422} <= set(statuses), statuses
    seconds = time.monotonic() - stats["started"]
    SUMMARY.append(f"fuzz: {stats['requests']} requests over {len(OPERATIONS)} operations in "
                   f"{seconds:.0f} s, 5xx {stats.get('5xx', 0)}, tracebacks "
                   f"{stats.get('tracebacks', 0)}; statuses "
                   + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items(), key=str)))
