"""Hostile HTTP requests for every operation a daemon's OpenAPI document lists.

Shared by tests/test_fuzz.py (a fixed seed and a bounded number of examples: part of
``make test``) and bench/fuzz.py (the same requests, many more of them). The daemon is real;
the requests go out over a plain socket (so any byte can be sent) and the answer is read with
http.client. Every operation gets hostile path parameters, query parameters (the documented
names with hostile values, and unknown names), headers (conditional, Range, Content-Type,
Content-Encoding, X-Request-Id, and Authorization: none, garbage, JWTs with a hostile header
or hostile claims signed with the daemon's own key, valid tokens of each role) and bodies
(random bytes, malformed, deep or mistyped JSON, hostile multipart and forms).

The daemon under fuzz runs in ``edit`` mode (fixed for life: no request can move it to a mode
that would hide routes from later examples); destructive account routes only ever name
accounts made for the purpose, never the ones whose tokens the fuzz uses.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import time
import urllib.parse
from dataclasses import dataclass, field

import nacl.signing
from hypothesis import strategies as st

from harness import Api, Daemon

TOKEN_TTL = 86400
MAX_UPLOAD = 512 * 1024

DAEMON_CONFIG = {
    "element": {"initial_mode": "edit"},
    "auth": {"token_ttl_seconds": TOKEN_TTL},
    "limits": {"max_upload_bytes": MAX_UPLOAD},
    "retention": {"gc_interval_seconds": 0},
}


# --- the daemon and what the fuzz knows about it ------------------------------------------

@dataclass
class Operation:
    method: str
    path: str
    path_params: list[str]
    query: dict[str, dict]           # name -> schema
    media: str | None                # the request body's media type, if any
    schema: dict | None              # and its schema
    public: bool

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def weight(self) -> int:
        """Its share of the examples: more where there is more to break."""
        return 40 + 15 * (len(self.query) + len(self.path_params)) + 80 * bool(self.media)


def operations(doc: dict) -> list[Operation]:
    out = []
    for path, item in doc["paths"].items():
        common = item.get("parameters", [])
        for method, op in item.items():
            if method == "parameters":
                continue
            params = common + op.get("parameters", [])
            media, schema = None, None
            if "requestBody" in op:
                media, spec = next(iter(op["requestBody"]["content"].items()))
                schema = spec["schema"]
            out.append(Operation(
                method.upper(), path, [p["name"] for p in params if p["in"] == "path"],
                {p["name"]: p.get("schema", {}) for p in params if p["in"] == "query"},
                media, schema, op.get("security") == []))
    return out


@dataclass
class Target:
    """One daemon prepared for fuzzing: tokens of every role, accounts to break, files."""
    daemon: Daemon
    doc: dict
    tokens: dict[str, str]
    own_ids: set[str]
    victims: dict[str, str]          # client id -> secret (accounts the fuzz may wreck)
    file_ids: list[str]              # files the fuzz reads and patches
    doomed_ids: list[str]            # files DELETE may take
    job_ids: list[str]
    etags: list[str]
    kid: str
    key: nacl.signing.SigningKey
    issuer: str
    log_offset: int = 0
    stats: dict = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.daemon.port

    def __repr__(self) -> str:
        return f"<fuzz target: artstored on port {self.port}, log {self.daemon.log_path}>"

    def _repr_pretty_(self, printer, cycle) -> None:  # how Hypothesis prints an example
        printer.text(repr(self))

    def schema(self, ref_or_schema: dict) -> dict:
        while "$ref" in ref_or_schema:
            ref_or_schema = self.doc["components"]["schemas"][ref_or_schema["$ref"]
                                                              .rsplit("/", 1)[1]]
        return ref_or_schema


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def prepare(daemon: Daemon) -> Target:
    """Accounts, tokens, files and a job on a freshly started daemon (DAEMON_CONFIG)."""
    admin = daemon.api()
    tokens = {"admin": daemon.admin_token()}
    own = {daemon.admin_credentials()["client_id"]}
    for role in ("operator", "user"):
        cid, secret = daemon.create_account(f"fuzz-{role}", role)
        own.add(cid)
        tokens[role] = daemon.token_for(cid, secret)
        if role == "user":
            tokens["reader"] = daemon.token_for(cid, secret, scope="files:read")
    victims = dict(daemon.create_account(f"victim-{i}", role)
                   for i, role in enumerate(("user", "operator", "admin", "user")))
    vid, vsecret = next(iter(victims.items()))
    tokens["victim"] = daemon.token_for(vid, vsecret)
    files = [admin.upload_ok(f"content {i}".encode(), f"f{i}.txt",
                             fields={"description": f"file {i}",
                                     "custom_attributes": {"n": i, "tag": "keep"}})
             for i in range(4)]
    doomed = [admin.upload_ok(b"x" * i, f"d{i}.bin") for i in range(8)]
    r = Api(daemon.port, tokens["operator"]).request("POST", "/api/v1/element/gc")
    assert r.status == 202, r.body
    job_id = r.json()["job_id"]
    keys = os.path.join(daemon.data_dir, "keys")
    with open(os.path.join(keys, "signing.json")) as f:
        kid = json.load(f)["active"]
    with open(os.path.join(keys, "signing", f"{kid}.key"), "rb") as f:
        key = nacl.signing.SigningKey(f.read())
    payload = tokens["admin"].split(".")[1]
    issuer = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["iss"]
    r = Api(daemon.port).get("/api/v1/openapi.json")
    assert r.status == 200, r.body
    target = Target(daemon, r.json(), tokens, own, victims, [a["file_id"] for a in files],
                    [a["file_id"] for a in doomed], [job_id],
                    [f'"{a["checksum_sha256"]}"' for a in files[:2]] + ['"v1"', '"v2"'],
                    kid, key, issuer)
    target.log_offset = os.path.getsize(daemon.log_path)
    return target


# --- hostile values -----------------------------------------------------------------------

NASTY = [
    "", " ", "0", "-1", "-0", "1", "00001", "1e3", "0x10", "1_000", "+5", " 5", "5 ", "1.5",
    "²", "٣", "١٢", "¹²", "５", "Ⅻ", "𝟠", "NaN", "inf", "-inf", "null", "true", "[]", "{}",
    str(2 ** 31), str(2 ** 63 - 1), str(2 ** 63), str(2 ** 64), "9" * 40, "-" + "9" * 40,
    "\x00", "\x01\x02", "\x7f", "\t", "\u202e", "\ufeff", "\u0085", "\u2028", "😀", "ǅ", "ß",
    "\ud800", "\udcff", "a" * 300, "a" * 5000, "../../etc/passwd", "..", ".", "/", "%",
    "%zz", "%FF", "'\"<>", "\\", "*", "&", "=", "?", "#", ";", ",", "\"", "'",
    "desc", "asc", "relevance", "created_at", "edit", "rw", "ro", "ar", "admin", "user",
    "operator", "root", "files:read", "admin:write",
]
TIMES = [
    "2024-01-01", "2024-01-01T00:00:00Z", "2024-01-01T00:00:00+14:00", "2024-13-01",
    "0001-01-01T00:00:00+01:00", "0001-01-01", "9999-12-31T23:59:59-01:00", "9999-12-31",
    "1969-12-31T23:59:59.999999Z", "２０２４-01-01", "2024-01-01T25:00", "now", "T", "Z",
    "2024-01-01T00:00:00+99:00", "1970-01-01T00:00:00Z",
]
CURSORS = [
    "kd1", "ka1", "kd-1", "kd" + "9" * 30, "ka" + "9" * 30, "kd-" + "9" * 30,
    "ka9223372036854775807", "kd-9223372036854775808", "kd²", "kd٣", "kd 1", "kd1_0", "k",
    "r.1", "rabc.1", "rabc.", "rabc.99999999999999999999", "rabc.²", "rabc.-1", "r" + "a" * 80,
    "d", "a", "d0", "aZZ", "d" + "0" * 32, "d0190c6d6-3c39-7b3e-8a6e-5e1b2b9b1a1a", "18",
    "99999999999999999999999", "-5",
]
ETAGS = ['"v1"', '"v0"', '"v-1"', '"v²"', '"v٣"', '"v' + "9" * 30 + '"', '"v"', '"', '""',
         '*', 'W/"v1"', '"v1", "v2"', 'v1', '"vv1"', '"v 1"']
RANGES = ["bytes=0-0", "bytes=0-", "bytes=-1", "bytes=-0", "bytes=5-1", "bytes=0-1,2-3",
          "bytes=" + "9" * 30 + "-", "bytes=-" + "9" * 30, "bytes=0-" + "9" * 30, "bytes=²-",
          "bytes=٣-٤", "bytes=", "bytes=-", "items=0-1", "bytes=0--1", "bytes = 1 - 2",
          "bytes=1000000-", "BYTES=0-3"]
CONTENT_TYPES = [
    "", "application/json", "application/json; charset=utf-16",
    "application/json; charset=bogus",
    "application/merge-patch+json", "text/plain", "application/octet-stream",
    "multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=x",
    "multipart/form-data; boundary=" + "b" * 71, "multipart/form-data; boundary=\"\"",
    "multipart/form-data; boundary=é", "multipart/form-data; boundary=😀",
    "multipart/form-data; boundary=a; boundary=b", "multipart/mixed; boundary=x",
    "application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=bogus",
    "application/x-www-form-urlencoded; charset=utf-16", "application/x-www-form-urlencoded; "
    "charset=latin-1", "*/*", ";", "json", "application/json;;;", "text/html; charset=\"",
]
ENCODINGS = ["identity", "IDENTITY", "gzip", "deflate", "br", "zstd", "gzip, identity",
             "x" * 200, "", " ", "\t"]
HEADER_NAMES = ["If-Match", "If-None-Match", "If-Range", "Range", "X-Request-Id", "Accept",
                "Accept-Encoding", "Expect", "X-Forwarded-For", "Cookie", "Origin",
                "Content-Disposition", "X-Unknown", "Authorization"]

text = st.one_of(st.sampled_from(NASTY), st.text(max_size=24),
                 st.text(st.characters(codec="utf-8"), max_size=8))
# What a header can carry that its own value cannot: bytes that are not UTF-8 (aiohttp
# reads them as lone surrogates), Latin-1, and the values every header takes.
header_text = st.one_of(text, st.sampled_from(["\udc80", "\ud800", "\udcff*", "é", "100",
                                               "*", "", " ", "a" * 9000]))
numbers = st.one_of(st.integers(-10, 2000).map(str), st.integers().map(str),
                    st.sampled_from(["1", "20", "1000", "1001", "0"]))


QUERIES = ["a", "a AND", "a AND NOT b", '"unterminated', "(", ")", "a:b", "filename:x",
           "attr.n:1", "attr.n:[0 TO 5]", "*", "a~2", "[a TO b]", "size:>10", "a^1e999",
           "created_at:>2024", '"a" "b"', "-", "+", "NOT", "\\", "a" * 1000, "\ud800", "é*"]


def value_for(name: str, schema: dict):
    """Hostile (and sometimes valid) values for a query parameter: mostly the kind of
    value the parameter takes, broken in the ways that kind breaks."""
    choices = [text]
    if "enum" in schema:
        choices.append(st.sampled_from(schema["enum"]))
    if schema.get("type") == "integer":
        choices += [numbers] * 3
    if schema.get("format") == "date-time":
        choices += [st.sampled_from(TIMES)] * 4
    if name == "cursor":
        choices += [st.sampled_from(CURSORS)] * 4
    if name == "q":
        choices += [st.sampled_from(QUERIES)] * 4
    return st.one_of(*choices)


def encode(value: str, how: str) -> bytes:
    """A value for the request target: percent-encoded (UTF-8 or Latin-1, so non-UTF-8
    escapes too), left as is, or raw bytes outside ASCII."""
    if how == "quote":
        return urllib.parse.quote(value, safe="", errors="surrogatepass").encode("ascii")
    if how == "latin1":
        return urllib.parse.quote(value, safe="", encoding="latin-1",
                                  errors="replace").encode("ascii")
    raw = value.encode("utf-8", "surrogatepass")
    if how == "raw":  # bytes outside ASCII go as they are; spaces and delimiters dropped
        return bytes(b for b in raw if b > 0x20 and b not in b"#?&")
    return urllib.parse.quote(value, safe="%=&+;/:@!$'()*,",  # "partial": % and & stay
                              errors="surrogatepass").encode("ascii")


HOW = st.sampled_from(["quote"] * 6 + ["latin1", "raw", "partial"])


# --- tokens -------------------------------------------------------------------------------

json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2 ** 70, 2 ** 70),
                        st.floats(), st.sampled_from(NASTY), st.text(max_size=12))
json_value = st.recursive(json_scalar, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=6), kids, max_size=4)),
    max_leaves=8)


def _dumps(value) -> bytes:
    return json.dumps(value, ensure_ascii=True).encode("ascii")


@st.composite
def forged_token(draw, target: Target) -> str:
    """A JWT with a hostile header or hostile claims, signed with the daemon's own key (so
    the claims are checked), with another key, or not at all."""
    now = int(time.time())
    header = {"alg": "EdDSA", "typ": "JWT", "kid": target.kid}
    if draw(st.booleans()):
        header[draw(st.sampled_from(["kid", "alg", "crit", "typ", "jku"]))] = draw(st.one_of(
            json_value, st.sampled_from([["a"], {"a": 1}, 7, None, True, "", "none", "HS256"])))
    if draw(st.integers(0, 20)) == 0:
        header = draw(json_value)
    claims = {"iss": target.issuer, "sub": sorted(target.victims)[0], "name": "v",
              "role": "user", "scope": "files:read files:write", "iat": now, "nbf": now,
              "exp": now + 600, "jti": _b64url(draw(st.binary(min_size=6, max_size=6))),
              "gen": 1}
    for name in draw(st.lists(st.sampled_from(sorted(claims) + ["extra"]), max_size=3)):
        claims[name] = draw(st.one_of(json_value, st.sampled_from(
            [now - 10 ** 6, now + 10 ** 6, 2 ** 63, -2 ** 63, 10 ** 30, 1e300, "", "\ud800",
             "x" * 600, sorted(target.own_ids)[0], "admin", "gen", "1", [1]])))
    if draw(st.integers(0, 20)) == 0:
        claims = draw(json_value)
    signing_input = f"{_b64url(_dumps(header))}.{_b64url(_dumps(claims))}"
    how = draw(st.sampled_from(["ours"] * 6 + ["other", "garbage", "none", "parts"]))
    if how == "ours":
        sig = _b64url(target.key.sign(signing_input.encode()).signature)
    elif how == "other":
        sig = _b64url(nacl.signing.SigningKey.generate().sign(signing_input.encode()).signature)
    elif how == "garbage":
        sig = draw(st.sampled_from(["", "AAAA", "!!!!", "a", "=" * 4, "ab=="]))
    elif how == "none":
        return signing_input + "."
    else:
        return draw(st.sampled_from([signing_input, signing_input + ".a.b", "..", "a.b.c",
                                     "\x00.\x00.\x00", "é.é.é", ".".join(["A" * 3000] * 3)]))
    return f"{signing_input}.{sig}"


@st.composite
def authorization(draw, target: Target) -> str | None:
    kind = draw(st.sampled_from(["none"] * 2 + ["valid"] * 9 + ["garbage"] * 2
                                + ["forged"] * 3))
    if kind == "none":
        return None
    if kind == "valid":
        return "Bearer " + target.tokens[draw(st.sampled_from(
            ["admin", "admin", "operator", "user", "user", "reader", "victim"]))]
    if kind == "garbage":
        tok = target.tokens["user"]
        return draw(st.one_of(st.sampled_from([
            "", "Bearer", "Bearer ", "bearer " + tok, "BEARER  " + tok + "  ",
            "Bearer " + tok + "x",
            "Bearer " + tok[:-3], "Basic " + tok, "Token " + tok, "Bearer a b", "Bearer \x01",
            "Bearer " + "a" * 8200, "Basic", "Basic !!!", "Bearer é", "Bearer ..",
            "Basic " + base64.b64encode(b"a:b").decode()]),
            text.map(lambda t: "Bearer " + t), text))
    return "Bearer " + draw(forged_token(target))


# --- bodies -------------------------------------------------------------------------------

@st.composite
def json_for(draw, target: Target, schema: dict, depth: int = 0):
    """A JSON value shaped by ``schema`` (known members, right types often, wrong types
    too, unknown members sometimes)."""
    schema = target.schema(schema)
    if draw(st.integers(0, 5)) == 0 or depth > 3:
        return draw(json_value)
    if "oneOf" in schema or "allOf" in schema:
        return draw(json_for(target, draw(st.sampled_from(schema.get("oneOf")
                                                        or schema["allOf"])), depth + 1))
    if "enum" in schema:
        return draw(st.one_of(st.sampled_from(schema["enum"]), json_value))
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object" and schema.get("properties"):
        names = draw(st.lists(st.sampled_from(sorted(schema["properties"])), max_size=4,
                              unique=True))
        out = {n: draw(json_for(target, schema["properties"][n], depth + 1)) for n in names}
        if draw(st.integers(0, 6)) == 0:
            out[draw(text)] = draw(json_value)
        return out
    return draw({"string": st.one_of(text, st.sampled_from(
        [sorted(target.victims)[-1], "cl_0", "", "\ud800", "x" * 600, "x" * 70000])),
        "integer": st.integers(), "number": st.one_of(st.floats(), st.integers()),
        "boolean": st.booleans(), "array": st.lists(text, max_size=4),
        "object": st.dictionaries(st.text(max_size=8), json_value, max_size=4)}.get(
            kind, json_value))


RAW_JSON = [b"", b"{", b"{\"a\":", b"[", b"nul", b"NaN", b"-Infinity", b"1e999999",
            b"\"\\ud800\"", b"{\"mode\": \"\\udc80\"}", b"\xff\xfe{}", b"\xef\xbb\xbf{}",
            b"[" * 30000 + b"]" * 30000, b"{\"a\":" * 5000 + b"1" + b"}" * 5000,
            b"{\"description\": \"\\u0000\"}", b"{\"description\": \"\\ud800\"}",
            b"{\"custom_attributes\": {\"\\ud800\": 1}}", b"{\"grace_seconds\": 1e308}",
            b"{\"grace_seconds\": NaN}", b"{\"grace_seconds\": -Infinity}",
            b"{\"jti\": \"\", \"client_id\": \"\"}", b"{\"jti\": \"" + b"j" * 600 + b"\", "
            b"\"client_id\": \"c\"}", b"{\"name\": \"\\ud800\"}",
            b"{\"scopes\": [\"\\ud800\"]}",
            b"{\"custom_attributes\": {\"a\": 1e999}}", b"x" * 70000]


@st.composite
def json_body(draw, target: Target, schema: dict | None) -> bytes:
    if schema is None or draw(st.integers(0, 3)) == 0:
        return draw(st.one_of(st.sampled_from(RAW_JSON), st.sampled_from(RAW_JSON),
                              st.binary(max_size=64)))
    value = draw(json_for(target, schema))
    if draw(st.integers(0, 3)) == 0:
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(value).encode("ascii")


FIELDS = ["file", "description", "custom_attributes", "retention_policy", "ttl_days",
          "sha256"]
FILENAMES = ["a.txt", "", "../x", "/etc/passwd", "a" * 300, "é.txt", "\x00", "a\x01b",
             "😀" * 70, "C:\\x", ".", "..", "con", "a/b", "\u202etxt.exe"]


def field_value(name: str, focused: bool = False):
    """Plausible values for an upload's field, and hostile ones."""
    plausible = {
        "description": st.text(max_size=40),
        "custom_attributes": st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True),
                                             json_scalar, max_size=3).map(json.dumps),
        "retention_policy": st.sampled_from(["temporary", "temporary", "permanent",
                                             "Temporary", " "]),
        "ttl_days": st.one_of(st.integers(0, 400), st.integers(0, 2_000_000)).map(str),
        "sha256": st.binary(min_size=32, max_size=32).map(bytes.hex),
    }.get(name, text)
    return st.one_of(*[plausible] * (6 if focused else 2), text, st.sampled_from(
        ["{}", '{"a": 1}', "[]", "{", '{"a": "\\ud800"}', "0", "²", "1000001", "a" * 64,
         "x" * 70000, json.dumps({f"k{i}": "v" * 100 for i in range(200)}),
         json.dumps({"a": [[[[[[[[1]]]]]]]]}), '{"a": 1e999}']))


@st.composite
def multipart_body(draw, focused: bool = False) -> tuple[bytes, str]:
    """An upload: its fields plausible or hostile; unless ``focused``, the framing too."""
    boundary = "fuzzb0undary" if focused else draw(st.sampled_from(
        ["fuzzb0undary"] * 6 + ["b", "x" * 70, "a b", "é", "😀", "--"]))
    names = draw(st.lists(st.sampled_from(FIELDS[1:]), max_size=4, unique=True))
    if draw(st.integers(0, 5)):
        names.insert(draw(st.integers(0, len(names))), "file")
    if draw(st.integers(0, 5)) == 0:
        names += draw(st.lists(st.one_of(st.sampled_from(FIELDS), text), max_size=3))
    if draw(st.integers(0, 40)) == 0:
        names = ["description"] * 40
    parts = []
    for name in names:
        if name == "file":
            size = draw(st.sampled_from([0, 1, 100, 2000, 2000, 300_000, MAX_UPLOAD + 1]))
            content = b"\0" * size if size > 1000 else draw(st.binary(min_size=size,
                                                                      max_size=size))
            disp = 'form-data; name="file"'
            fname = draw(st.one_of(st.just("a.txt"), st.none(), st.sampled_from(FILENAMES),
                                   text) if not focused or draw(st.booleans()) else
                         st.just("a.txt"))
            how = draw(st.sampled_from(["plain", "star", "star", "badstar"]))
            if fname is not None and how == "plain":
                disp += '; filename="' + fname.replace('"', '\\"') + '"'
            elif fname is not None and how == "star":
                disp += "; filename*=UTF-8''" + urllib.parse.quote(fname, safe="",
                                                                    errors="surrogatepass")
            elif fname is not None:
                disp += draw(st.sampled_from(["; filename*=bogus''a", "; filename*=UTF-8''%FF",
                                              "; filename*=''", "; filename*=UTF-8'x",
                                              '; filename="unterminated', "; filename",
                                              "; filename*=latin-1''%E9"]))
            head = f"Content-Disposition: {disp}\r\n"
            ctype = draw(st.one_of(st.none(), st.just("text/plain"),
                                   st.sampled_from(CONTENT_TYPES), text)
                         if not focused or draw(st.booleans()) else st.none())
            if ctype is not None:
                head += f"Content-Type: {ctype}\r\n"
            if not focused and draw(st.integers(0, 10)) == 0:
                head += "Content-Transfer-Encoding: " + draw(st.sampled_from(
                    ["base64", "binary", "quoted-printable", "x"])) + "\r\n"
            parts.append(head.encode("utf-8", "surrogatepass") + b"\r\n" + content)
        else:
            value = draw(field_value(name, focused))
            disp = f'form-data; name="{name}"' if focused else draw(st.sampled_from(
                [f'form-data; name="{name}"'] * 4 + [
                    f"form-data; name={name}", f"form-data; name*=UTF-8''{name}", "form-data",
                    f'attachment; name="{name}"', "",
                    f'form-data; name="{name}"; filename="x"']))
            head = f"Content-Disposition: {disp}\r\n" if disp else "X: y\r\n"
            parts.append(head.encode("utf-8", "surrogatepass") + b"\r\n"
                         + value.encode("utf-8", "surrogatepass"))
    dash = b"--" + boundary.encode("utf-8")
    body = b"".join(dash + b"\r\n" + p + b"\r\n" for p in parts) + dash + b"--\r\n"
    damage = "none" if focused else draw(st.sampled_from(
        ["none"] * 8 + ["truncate", "no-close", "garbage-head", "preamble", "no-crlf"]))
    if damage == "truncate":
        body = body[:draw(st.integers(0, max(0, len(body) - 1)))]
    elif damage == "no-close":
        body = body[: -len(dash) - 4]
    elif damage == "garbage-head":
        body = body.replace(b"Content-Disposition", b"Content-Disposition\r\nbad line", 1)
    elif damage == "preamble":
        body = b"preamble\r\n" + body
    elif damage == "no-crlf":
        body = body.replace(b"\r\n", b"\n")
    ctype = f"multipart/form-data; boundary={boundary}"
    if " " in boundary:
        ctype = f'multipart/form-data; boundary="{boundary}"'
    return body, ctype


@st.composite
def form_body(draw, target: Target) -> bytes:
    cid, secret = draw(st.sampled_from(sorted(target.victims.items())))
    pairs = []
    if draw(st.integers(0, 5)):
        pairs.append(("grant_type", draw(st.sampled_from(["client_credentials"] * 4
                                                         + ["password", "", "\x00"]))))
    if draw(st.booleans()):
        pairs += [("client_id", draw(st.one_of(st.just(cid), text))),
                  ("client_secret", draw(st.one_of(st.just(secret), text)))]
    for _ in range(draw(st.integers(0, 3))):
        pairs.append((draw(st.sampled_from(["scope", "grant_type", "client_id",
                                            "client_secret", "x", ""])), draw(text)))
    how = draw(HOW)
    return b"&".join(encode(k, how) + b"=" + encode(v, how) for k, v in pairs)


# --- whole requests -----------------------------------------------------------------------

@dataclass
class Req:
    op: str
    method: str
    target: bytes
    headers: list[tuple[str, bytes]]
    body: bytes | None
    chunked: bool = False

    def raw(self, port: int) -> bytes:
        head = [self.method.encode("latin-1") + b" " + self.target + b" HTTP/1.1",
                f"Host: 127.0.0.1:{port}".encode(), b"Connection: close"]
        head += [n.encode("latin-1") + b": " + v for n, v in self.headers]
        body = self.body or b""
        if self.chunked:
            head.append(b"Transfer-Encoding: chunked")
            step = max(1, len(body) // 3)
            body = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step])
                            for i in range(0, len(body), step)) + b"0\r\n\r\n"
        elif self.body is not None:
            head.append(b"Content-Length: %d" % len(body))
        return b"\r\n".join(head) + b"\r\n\r\n" + body

    def __repr__(self) -> str:
        body = "None" if self.body is None else f"{len(self.body)} bytes {self.body[:1000]!r}"
        headers = "".join(f"\n    {n}: {v[:400]!r}" for n, v in self.headers)
        return (f"<{self.op}: {self.method} {self.target[:500]!r}{headers}\n    body "
                f"{body}{' (chunked)' if self.chunked else ''}>")

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))


def _header_value(value: str) -> bytes:
    try:  # "\udc80".."\udcff" stand for single bytes that are not UTF-8
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogatepass")
    return bytes(b for b in raw if b not in b"\r\n")  # framing stays intact


def path_value(target: Target, op: Operation, name: str):
    known = {"file_id": target.doomed_ids if op.method == "DELETE" else target.file_ids,
             "job_id": target.job_ids, "client_id": sorted(target.victims),
             "kind": ["gc", "rebuild", "reindex", "verify", "scrub", "export"]}.get(name, ["x"])
    return st.one_of(st.sampled_from(known), st.sampled_from(known), st.sampled_from(known),
                     text, st.sampled_from(["0190c6d6-3c39-7b3e-8a6e-5e1b2b9b1a1a", "%2F",
                                            "a/b", "cl_" + "0" * 16, "x" * 600]))


@st.composite
def request(draw, target: Target, op: Operation) -> Req:
    """One request for ``op``. Half are *focused*: the right method and path shape, a token
    whose role may call the operation, only documented parameter names and no refused
    encoding, so that the hostile values and bodies reach the handler's own code. The
    others are hostile in every part at once."""
    focused = draw(st.booleans())
    method = op.method if focused else draw(st.sampled_from(
        [op.method] * 20 + ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS",
                            "TRACE", "PROPFIND", "get"]))
    # path
    path = op.path
    for name in op.path_params:
        value = draw(path_value(target, op, name))
        how = "quote" if focused else draw(HOW)
        path = path.replace("{" + name + "}", encode(value, how).decode("latin-1"))
    suffix = b"" if focused else draw(st.sampled_from(
        [b""] * 20 + [b"/", b"//", b"/..", b"%00", b"/%2e%2e", b"%FF", b";x"]))
    # query
    pairs = []
    names = sorted(op.query) or ["limit"]
    for _ in range(draw(st.integers(0, 4 if op.query else 1))):
        name = draw(st.sampled_from(names)) if focused else draw(st.one_of(
            st.sampled_from(names), st.sampled_from(["attr.n", "attr.tag", "attr.", "attr.ü",
                                                     "attr." + "a" * 70, "unknown", "",
                                                     "limit[]"]), text))
        value = draw(value_for(name, op.query.get(name, {})))
        how = draw(HOW)
        pairs.append(encode(name, how) + b"=" + encode(value, how))
    query = b"&".join(pairs)
    if not focused and draw(st.integers(0, 15)) == 0:
        query = draw(st.sampled_from([b"&&&=", b"%", b"=x", b"a=%FF%FE", b"?", b"a=1&a=2",
                                      b"a" * 9000]))
    target_bytes = path.encode("latin-1") + suffix + (b"?" + query if query else b"")
    # headers
    headers: list[tuple[str, bytes]] = []
    if focused and not op.public:
        auth = "Bearer " + target.tokens[draw(st.sampled_from(["admin", "admin", "operator"]))]
    else:
        auth = draw(authorization(target))
    if auth is not None:
        headers.append(("Authorization", _header_value(auth)))
    optional = HEADER_NAMES[:5] if focused else HEADER_NAMES[:8] + ["Content-Encoding"]
    for name in draw(st.lists(st.sampled_from(optional), max_size=3, unique=True)):
        if name == "Expect":
            value = draw(st.one_of(st.sampled_from(["100-continue", "100-Continue", "foo"]),
                                   header_text))
        elif name == "Content-Encoding":
            value = draw(st.one_of(st.sampled_from(ENCODINGS), header_text))
        elif name in ("If-Match", "If-None-Match", "If-Range"):
            value = draw(st.one_of(st.sampled_from(ETAGS + target.etags), header_text))
        elif name == "Range":
            value = draw(st.one_of(st.sampled_from(RANGES), header_text))
        else:
            value = draw(header_text)
        if focused or draw(st.integers(0, 5)):  # aiohttp's parser refuses control bytes
            value = "".join(c for c in value if c >= " " and c != "\x7f")
        headers.append((name, _header_value(value)))
    if not focused and draw(st.integers(0, 12)) == 0:
        headers.append((draw(st.sampled_from(HEADER_NAMES)), draw(st.binary(max_size=40))
                        .replace(b"\r", b"").replace(b"\n", b"")))
    # body
    body, ctype = None, None
    kind = op.media if focused or draw(st.integers(0, 6)) else draw(st.sampled_from(
        [None, "bytes", "application/json", "multipart/form-data"]))
    if kind == "multipart/form-data":
        body, ctype = draw(multipart_body(focused))
    elif kind == "application/x-www-form-urlencoded":
        body, ctype = draw(form_body(target)), kind
        if draw(st.integers(0, 4)) == 0:
            cid, secret = draw(st.sampled_from(sorted(target.victims.items())))
            basic = draw(st.one_of(st.just(f"{cid}:{secret}"), text, st.just(cid)))
            headers.append(("Authorization", b"Basic " + base64.b64encode(
                basic.encode("utf-8", "surrogatepass"))))
    elif kind in ("application/json", "application/merge-patch+json"):
        body, ctype = draw(json_body(target, op.schema if kind == op.media else None)), kind
    elif kind == "bytes":
        body = draw(st.binary(max_size=256))
    if not focused and draw(st.integers(0, 3)) == 0:
        ctype = draw(st.one_of(st.sampled_from(CONTENT_TYPES), text))
    if ctype is not None:
        headers.append(("Content-Type", _header_value(ctype)))
    chunked = body is not None and draw(st.integers(0, 8)) == 0
    return Req(op.name, method, target_bytes, headers, body, chunked)


# --- sending, and what counts as a failure ------------------------------------------------

@dataclass
class Answer:
    status: int | None               # None: the connection ended without an answer
    headers: dict
    body: bytes
    error: str = ""


def send(port: int, req: Req, timeout: float = 60) -> Answer:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        try:
            sock.sendall(req.raw(port))
        except OSError:
            pass  # answered (and closed) before the whole body went: read the answer
        resp = http.client.HTTPResponse(sock, method=req.method.upper())
        try:
            resp.begin()
            body = resp.read()
        except (http.client.HTTPException, OSError) as exc:
            return Answer(None, {}, b"", f"{type(exc).__name__}: {exc}")
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
    finally:
        sock.close()


def _clip(line: str, n: int = 3000) -> str:
    return line if len(line) <= n else line[:n // 2] + " [...] " + line[-n // 2:]


def log_problems(lines) -> list[str]:
    """The lines that record a traceback or an error. Log lines are JSON (a traceback is
    the ``exc`` member); a line that is not JSON is bad if it is a Python traceback. (Only
    what a line *is* counts: a request line echoed in a message may say anything.)"""
    bad = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            if "Traceback (most recent call last)" in line:
                bad.append(_clip(line))
        elif "exc" in record or record.get("level") in ("error", "critical"):
            bad.append(_clip(line))
    return bad


def bad_log_lines(target: Target) -> list[str]:
    """New log lines since the last call that hold a traceback or an error."""
    with open(target.daemon.log_path, "rb") as f:
        f.seek(target.log_offset)
        data = f.read()
    cut = data.rfind(b"\n") + 1  # a line being written is read next time, whole
    target.log_offset += cut
    return log_problems(data[:cut].decode("utf-8", "replace").splitlines())


def problem_shape_ok(req: Req, answer: Answer) -> bool:
    """Every error the application answers is problem+json. Only aiohttp's parser (a
    request it cannot read: 400, 413, 414, 431 before any route) answers in plain text."""
    if answer.status is None or answer.status < 400 or req.method.upper() == "HEAD":
        return True
    if answer.headers.get("content-type", "").startswith("application/problem+json"):
        doc = json.loads(answer.body)
        return all(k in doc for k in ("type", "title", "status", "detail", "code")) and \
            doc["status"] == answer.status
    return answer.status in (400, 413, 414, 431) and "x-request-id" not in answer.headers


def check(target: Target, req: Req) -> Answer:
    """Send ``req``; AssertionError naming the request if the answer is a 5xx, is not a
    problem document, or the daemon logged a traceback or an error meanwhile."""
    answer = send(target.port, req)
    st_ = target.stats
    st_["requests"] = st_.get("requests", 0) + 1
    key = answer.status if answer.status is not None else "no answer"
    st_.setdefault("statuses", {})
    st_["statuses"][key] = st_["statuses"].get(key, 0) + 1
    bad = bad_log_lines(target)
    if answer.status is not None and answer.status >= 500:
        st_["5xx"] = st_.get("5xx", 0) + 1
    if any("Traceback (most recent call last)" in line for line in bad):
        st_["tracebacks"] = st_.get("tracebacks", 0) + 1
    assert answer.status is not None and answer.status < 500, \
        f"{answer.status} {answer.error} {answer.body[:600]!r} for {req!r}\nlog: {bad}"
    assert not bad, f"the daemon logged, for {req!r}:\n" + "\n".join(bad)
    assert problem_shape_ok(req, answer), \
        f"{answer.status} is not a problem document: {answer.headers} " \
        f"{answer.body[:300]!r} for {req!r}"
    return answer
