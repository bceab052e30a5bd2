"""Bad input gets a clear problem+json error and changes nothing on disk or in LMDB."""

import hashlib
import json
import os
import socket
import time

import pytest

from harness import multipart, objects_files, store_snapshot, tmp_files


@pytest.fixture
def small(make_daemon):
    """A daemon with a 1 MiB upload limit."""
    return make_daemon("small", config={"limits": {"max_upload_bytes": 1024 * 1024}})


def assert_nothing_changed(daemon, before_objects, before_snapshot):
    assert objects_files(daemon.data_dir) == before_objects
    assert tmp_files(daemon.data_dir) == []
    after = store_snapshot(daemon.data_dir)
    assert after["catalog"] == before_snapshot["catalog"]
    # No intent of the refused upload (the baseline's own may linger for a moment).
    assert {i["file_id"] for _, i in after["pending"]} <= set(after["catalog"])


@pytest.fixture
def guard(daemon):
    """Checks after the test that nothing was stored or left half-written."""
    daemon.api().upload_ok(b"baseline", "baseline.txt")
    objects = objects_files(daemon.data_dir)
    snapshot = store_snapshot(daemon.data_dir)
    yield daemon
    assert_nothing_changed(daemon, objects, snapshot)


def test_checksum_mismatch_leaves_nothing(guard):
    data = os.urandom(300_000)
    r = guard.api().upload(data, "bad.bin", fields={"sha256": "0" * 64})
    assert r.status == 422
    problem = r.problem
    assert problem["code"] == "checksum_mismatch"
    assert problem["actual"] == hashlib.sha256(data).hexdigest()


def test_checksum_mismatch_declared_after_file(guard):
    r = guard.api().upload(b"abc", "bad.bin", fields={"sha256": "f" * 64}, file_first=True)
    assert r.status == 422 and r.problem["code"] == "checksum_mismatch"


@pytest.mark.parametrize("fields,code", [
    ({"custom_attributes": "[1, 2]"}, "custom_attributes_not_object"),
    ({"custom_attributes": '"text"'}, "custom_attributes_not_object"),
    ({"custom_attributes": "{not json"}, "invalid_json"),
    ({"custom_attributes": '{"a.b": 1}'}, "invalid_custom_attributes"),
    ({"description": "x" * 1001}, "description_too_long"),
    ({"description": "bell\x07"}, "invalid_description"),
    ({"sha256": "xyz"}, "invalid_checksum"),
    ({"retention_policy": "forever"}, "invalid_retention"),
    ({"retention_policy": "temporary", "ttl_days": "0"}, "invalid_retention"),
    ({"retention_policy": "temporary", "ttl_days": "366"}, "invalid_retention"),
    ({"retention_policy": "permanent", "ttl_days": "5"}, "invalid_retention"),
    ({"colour": "blue"}, "unknown_field"),
])
def test_bad_fields_refused(guard, fields, code):
    for file_first in (False, True):
        r = guard.api().upload(os.urandom(2000), "f.bin", fields=fields, file_first=file_first)
        assert r.status == 422, (fields, r.body)
        assert r.problem["code"] == code


def test_attr_json_over_4k_refused(guard):
    attrs = {f"key{i}": "v" * 90 for i in range(40)}  # ~4 KB of attributes + the rest
    r = guard.api().upload(b"data", "big-attrs.txt", fields={"custom_attributes": attrs})
    assert r.status == 422
    assert r.problem["code"] == "attr_too_large"


def test_description_of_exactly_1000_characters_is_fine(daemon):
    attr = daemon.api().upload_ok(b"d", "d.txt", fields={"description": "я" * 1000})
    assert len(attr["description"]) == 1000


@pytest.mark.parametrize("body,ctype,code,status", [
    (b"no boundary here", "multipart/form-data; boundary=zzz", "malformed_multipart", 400),
    (b"--zzz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nabc",
     "multipart/form-data; boundary=zzz", "malformed_multipart", 400),
    (b"--zzz\r\nX: y\r\n\r\nabc\r\n--zzz--\r\n", "multipart/form-data; boundary=zzz",
     "malformed_multipart", 400),
    (b"--zzz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nabc",
     "multipart/form-data", "malformed_multipart", 400),
    (b"--zzz--\r\n", "multipart/form-data; boundary=zzz", "missing_file", 422),
    (b"just bytes", "application/octet-stream", "unsupported_media_type", 422),
    (b'{"a": 1}', "application/json", "unsupported_media_type", 422),
])
def test_malformed_multipart(guard, body, ctype, code, status):
    r = guard.api().request("POST", "/api/v1/files", body=body, headers={"Content-Type": ctype})
    assert r.status == status, r.body
    assert r.problem["code"] == code


def test_two_file_parts_refused(guard):
    body1, ctype = multipart(content=b"one", filename="1.txt", boundary="B")
    body2, _ = multipart(content=b"two", filename="2.txt", boundary="B")
    body = body1[: -len(b"--B--\r\n")] + body2
    r = guard.api().request("POST", "/api/v1/files", body=body, headers={"Content-Type": ctype})
    assert r.status == 400 and r.problem["code"] == "multiple_files"


def test_huge_header_block_refused(guard):
    body = (b"--zzz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n"
            + b"X-Pad: " + b"p" * 40000 + b"\r\n\r\nabc\r\n--zzz--\r\n")
    r = guard.api().request("POST", "/api/v1/files", body=body,
                            headers={"Content-Type": "multipart/form-data; boundary=zzz"})
    assert r.status == 400 and r.problem["code"] == "malformed_multipart"


def _raw_upload_until_answer(port: int, head: bytes, chunks, total_planned: int):
    """Send ``head`` then ``chunks`` until the server answers; returns (answer, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(30)
    sent = 0
    try:
        sock.sendall(head)
        for chunk in chunks:
            sock.setblocking(False)
            try:
                early = sock.recv(65536)
            except BlockingIOError:
                early = b""
            sock.setblocking(True)
            sock.settimeout(30)
            if early:
                return early + _read_rest(sock), sent
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        return _read_rest(sock), sent
    finally:
        sock.close()


def _read_rest(sock) -> bytes:
    out = b""
    sock.settimeout(10)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            out += data
            if b"\r\n\r\n" in out and b"}" in out:
                break
    except (ConnectionResetError, socket.timeout):
        pass
    return out


def _slow_chunks(n: int, size: int, chunked: bool):
    for _ in range(n):
        data = os.urandom(size)
        yield (f"{len(data):x}\r\n".encode() + data + b"\r\n") if chunked else data
        time.sleep(0.002)


def test_over_limit_declared_length_gets_413_at_once(small):
    token = small.admin_token()
    declared = 100 * 1024 * 1024
    head = (f"POST /api/v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary=zzz\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()
    answer, sent = _raw_upload_until_answer(small.port, head, _slow_chunks(1600, 65536, False),
                                            declared)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"upload_too_large"' in answer
    assert sent < declared


def test_over_limit_streamed_gets_413_before_the_end(small):
    token = small.admin_token()
    preamble = (b"--zzz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big\"\r\n"
                b"\r\n")
    head = (f"POST /api/v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary=zzz\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n").encode()
    head += f"{len(preamble):x}\r\n".encode() + preamble + b"\r\n"
    planned = 800 * 65536  # 50 MiB; the limit is 1 MiB
    answer, sent = _raw_upload_until_answer(small.port, head, _slow_chunks(800, 65536, True),
                                            planned)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b'"upload_too_large"' in answer
    assert sent < planned / 4
    assert tmp_files(small.data_dir) == []
    assert store_snapshot(small.data_dir)["catalog"] == []


def test_exactly_at_limit_is_accepted(small):
    data = os.urandom(1024 * 1024)
    attr = small.api().upload_ok(data, "limit.bin")
    assert attr["file_size"] == len(data)


def test_json_bodies_are_bounded(daemon):
    r = daemon.api().request("PUT", "/api/v1/element/mode", body=b"{" + b" " * 200_000 + b"}",
                             headers={"Content-Type": "application/json"})
    assert r.status == 413 and r.problem["code"] == "request_too_large"
    assert json.loads(daemon.api().get("/api/v1/element").body)["mode"] == "rw"
