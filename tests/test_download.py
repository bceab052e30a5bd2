"""Range, ETag, conditional requests and HEAD on downloads."""

import base64
import hashlib
import os

import pytest


@pytest.fixture(scope="module")
def stored(shared_daemon):
    data = os.urandom(10_000)
    attr = shared_daemon.api().upload_ok(data, "range.bin")
    return attr, data


def test_whole_file_headers(api, stored):
    attr, data = stored
    r = api.download(attr["file_id"])
    assert r.status == 200 and r.body == data
    assert r.headers["etag"] == f'"{attr["checksum_sha256"]}"'
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["content-length"] == str(len(data))
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert r.headers["repr-digest"] == f"sha-256=:{digest}:"


def test_single_range(api, stored):
    attr, data = stored
    r = api.download(attr["file_id"], headers={"Range": "bytes=100-199"})
    assert r.status == 206
    assert r.body == data[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert r.headers["content-length"] == "100"


def test_open_ended_range(api, stored):
    attr, data = stored
    r = api.download(attr["file_id"], headers={"Range": "bytes=9990-"})
    assert r.status == 206 and r.body == data[9990:]


def test_range_past_the_end_is_clipped(api, stored):
    attr, data = stored
    r = api.download(attr["file_id"], headers={"Range": "bytes=9000-20000"})
    assert r.status == 206 and r.body == data[9000:]
    assert r.headers["content-range"] == f"bytes 9000-9999/{len(data)}"


def test_suffix_range(api, stored):
    attr, data = stored
    r = api.download(attr["file_id"], headers={"Range": "bytes=-500"})
    assert r.status == 206 and r.body == data[-500:]
    assert r.headers["content-range"] == f"bytes 9500-9999/{len(data)}"
    whole = api.download(attr["file_id"], headers={"Range": "bytes=-50000"})
    assert whole.status == 206 and whole.body == data


def test_unsatisfiable_range(api, stored):
    attr, data = stored
    for header in ("bytes=10000-", "bytes=20000-30000", "bytes=-0"):
        r = api.download(attr["file_id"], headers={"Range": header})
        assert r.status == 416, header
        assert r.headers["content-range"] == f"bytes */{len(data)}"
        assert r.problem["code"] == "range_not_satisfiable"


def test_malformed_or_multiple_ranges_get_the_whole_file(api, stored):
    attr, data = stored
    for header in ("bytes=0-1,5-6", "items=0-5", "bytes=5-1", "bytes=abc"):
        r = api.download(attr["file_id"], headers={"Range": header})
        assert r.status == 200 and r.body == data, header


def test_if_none_match_gives_304(api, stored):
    attr, _ = stored
    etag = f'"{attr["checksum_sha256"]}"'
    r = api.download(attr["file_id"], headers={"If-None-Match": etag})
    assert r.status == 304 and r.body == b""
    assert r.headers["etag"] == etag
    r = api.download(attr["file_id"], headers={"If-None-Match": '"other", ' + etag})
    assert r.status == 304
    r = api.download(attr["file_id"], headers={"If-None-Match": '"other"'})
    assert r.status == 200


def test_if_range(api, stored):
    attr, data = stored
    etag = f'"{attr["checksum_sha256"]}"'
    r = api.download(attr["file_id"], headers={"Range": "bytes=0-9", "If-Range": etag})
    assert r.status == 206 and r.body == data[:10]
    r = api.download(attr["file_id"], headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert r.status == 200 and r.body == data


def test_head(api, stored):
    attr, data = stored
    r = api.request("HEAD", f"/api/v1/files/{attr['file_id']}/download")
    assert r.status == 200 and r.body == b""
    assert r.headers["content-length"] == str(len(data))
    assert r.headers["etag"] == f'"{attr["checksum_sha256"]}"'
    r = api.request("HEAD", f"/api/v1/files/{attr['file_id']}/download",
                    headers={"Range": "bytes=0-99"})
    assert r.status == 206 and r.headers["content-length"] == "100"


def test_metadata_etag(api, stored):
    attr, _ = stored
    r = api.get(f"/api/v1/files/{attr['file_id']}")
    assert r.headers["etag"] == '"v1"'
    r = api.get(f"/api/v1/files/{attr['file_id']}", headers={"If-None-Match": '"v1"'})
    assert r.status == 304
