"""The malformed inputs a review found answering 500 with a traceback: each is a clear 4xx
now, and the log holds no traceback (one line per unparsable request at most)."""

import base64
import json
import socket
import time

import pytest

from harness import multipart


def _raw(port: int, request: bytes) -> tuple[int, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _jwt(header: dict) -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    return f"{enc(header)}.{enc({'sub': 'x'})}.AAAA"


@pytest.mark.parametrize("kid", [["a"], {"a": 1}, 7, None])
def test_a_jwt_whose_kid_is_not_a_string_is_401(api, kid):
    r = api.with_token(_jwt({"alg": "EdDSA", "typ": "JWT", "kid": kid})).get("/api/v1/files")
    assert r.status == 401 and r.problem["code"] == "token_malformed"


@pytest.mark.parametrize("path,code", [
    ("/api/v1/files?limit=%C2%B2", "invalid_limit"),           # ²
    ("/api/v1/files?limit=%D9%A3", "invalid_limit"),           # Arabic-Indic three
    ("/api/v1/search?q=a&size_min=%C2%B2", "invalid_filter"),
    ("/api/v1/search?q=a&limit=%C2%B9%C2%B2", "invalid_limit"),
    ("/api/v1/audit?limit=%C2%B2", "invalid_limit"),
    ("/api/v1/audit?cursor=%C2%B2", "invalid_cursor"),
    ("/api/v1/audit?cursor=99999999999999999999999", "invalid_cursor"),
])
def test_unicode_digits_are_not_numbers(api, path, code):
    r = api.get(path)
    assert r.status == 400 and r.problem["code"] == code, (r.status, r.body)


def test_unicode_digits_in_ttl_days_and_if_match(api):
    r = api.upload(b"x", "t.txt", fields={"retention_policy": "temporary", "ttl_days": "²"})
    assert r.status == 422 and r.problem["code"] == "invalid_retention"
    attr = api.upload_ok(b"y", "m.txt")
    r = api.request("PATCH", f"/api/v1/files/{attr['file_id']}",
                    body=b'{"description": "d"}',
                    headers={"Content-Type": "application/merge-patch+json",
                             "If-Match": '"v\u00b2"'.encode("utf-8").decode("latin-1")})
    assert r.status == 412 and r.problem["code"] == "precondition_failed"


@pytest.mark.parametrize("coding", ["deflate", "gzip", "br", "x-unknown"])
def test_a_compressed_request_body_is_415_and_stores_nothing(shared_daemon, api, coding):
    before = api.get("/api/v1/files?limit=1000").json()["items"]
    body, ctype = multipart({"description": "x"}, content=b"not really compressed")
    r = api.request("POST", "/api/v1/files", body=body,
                    headers={"Content-Type": ctype, "Content-Encoding": coding})
    assert r.status == 415 and r.problem["code"] == "unsupported_content_encoding"
    assert r.headers["accept-encoding"] == "identity"
    assert api.get("/api/v1/files?limit=1000").json()["items"] == before
    form = b"grant_type=client_credentials&client_id=a&client_secret=b"
    status, _ = _raw(shared_daemon.port,
                     b"POST /api/v1/auth/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Encoding: " + coding.encode() + b"\r\n"
                     b"Content-Length: " + str(len(form)).encode() + b"\r\n\r\n" + form)
    assert status == 415


def test_unparsable_requests_leave_no_traceback(daemon):
    garbage = [
        b"GET /api/v1/files HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\nConnection: close\r\n\r\n",
        b"GET /api/v1/files HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 20000 + b"\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\n\r\n",
        b"POST /api/v1/files HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"NOT-HTTP\r\n\r\n",   # refused by aiohttp without a log line at all
    ]
    started = time.monotonic()
    for request in garbage * 20:  # a stream of garbage, not one line
        status, _ = _raw(daemon.port, request)
        assert status == 400
    elapsed = time.monotonic() - started
    assert daemon.api().get("/api/v1/files").status == 200
    lines = daemon.log_lines()
    assert not [line for line in lines if "Traceback" in line]
    refused = [line for line in lines if "malformed request" in line]
    # At most 10 lines a second (a burst of 10, then 10/s) of the 80 that aiohttp reports.
    assert 1 <= len(refused) <= 10 + 10 * elapsed + 1, (len(refused), elapsed)
    metrics = daemon.api(None).get("/metrics").body.decode()
    assert any(line.startswith("artstore_http_malformed_requests_total ")
               and float(line.split()[1]) >= 80 for line in metrics.splitlines())


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(api, constant):
    attr = api.upload_ok(b"n", "n.txt")
    r = api.request("PATCH", f"/api/v1/files/{attr['file_id']}",
                    body=f'{{"custom_attributes": {{"a": {constant}}}}}'.encode(),
                    headers={"Content-Type": "application/merge-patch+json"})
    assert r.status == 400 and r.problem["code"] == "invalid_json"
    r = api.upload(b"m", "m.txt", fields={"custom_attributes": f'{{"a": {constant}}}'})
    assert r.status == 422 and r.problem["code"] == "invalid_json"
    assert json.loads(api.get(f"/api/v1/files/{attr['file_id']}").body)["version"] == 1


@pytest.mark.parametrize("number", ["1e999", "-1e999"])
def test_a_number_too_large_for_a_float_is_refused(api, number):
    """JSON parses 1e999 as an infinity, which no JSON can carry back: refused as a value,
    on upload and on PATCH, and nothing changes."""
    attr = api.upload_ok(b"n", "n.txt")
    r = api.request("PATCH", f"/api/v1/files/{attr['file_id']}",
                    body=f'{{"custom_attributes": {{"a": [{number}]}}}}'.encode(),
                    headers={"Content-Type": "application/merge-patch+json"})
    assert r.status in (400, 422) and r.problem["code"] == "invalid_custom_attributes"
    r = api.upload(b"m", "m.txt", fields={"custom_attributes": f'{{"a": {number}}}'})
    assert r.status in (400, 422) and r.problem["code"] == "invalid_custom_attributes"
    assert json.loads(api.get(f"/api/v1/files/{attr['file_id']}").body)["version"] == 1
