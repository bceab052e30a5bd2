"""Upload, metadata, list and download through a real daemon."""

import hashlib
import os

from harness import objects_files


def test_small_round_trip(api):
    attr = api.upload_ok(b"x", "one.txt", content_type="text/plain")
    assert attr["file_size"] == 1
    assert attr["checksum_sha256"] == hashlib.sha256(b"x").hexdigest()
    r = api.download(attr["file_id"])
    assert r.status == 200 and r.body == b"x"
    assert r.headers["content-type"].startswith("text/plain")


def test_empty_file_is_stored(api):
    attr = api.upload_ok(b"", "empty.txt")
    assert attr["file_size"] == 0
    assert attr["checksum_sha256"] == hashlib.sha256(b"").hexdigest()
    r = api.download(attr["file_id"])
    assert r.status == 200 and r.body == b"" and r.headers["content-length"] == "0"


def test_five_mib_round_trip(api):
    data = os.urandom(5 * 1024 * 1024)
    attr = api.upload_ok(data, "five.bin")
    assert attr["file_size"] == len(data)
    assert api.download(attr["file_id"]).body == data


def test_upload_answers_201_with_location_and_record(api, shared_daemon):
    r = api.upload(b"doc", "a.pdf", fields={"description": "Годовой отчёт",
                                              "custom_attributes": {"dept": "finance"}})
    assert r.status == 201
    attr = r.json()
    assert r.headers["location"] == f"/api/v1/files/{attr['file_id']}"
    assert attr["description"] == "Годовой отчёт"
    assert attr["custom_attributes"] == {"dept": "finance"}
    assert attr["version"] == 1 and attr["schema_version"] == "2.0"
    got = api.get(r.headers["location"])
    assert got.status == 200 and got.json() == attr
    # The sidecar on disk says the same as the API.
    sidecars = [p for p in objects_files(shared_daemon.data_dir)
                if attr["file_id"] in p and p.endswith(".attr.json")]
    assert len(sidecars) == 1


def test_fields_after_the_file_are_taken(api):
    attr = api.upload_ok(b"late", "late.txt", fields={"description": "after"},
                         file_first=True)
    assert attr["description"] == "after"


def test_declared_sha256_that_matches_is_accepted(api):
    data = b"checked"
    attr = api.upload_ok(data, "c.txt", fields={"sha256": hashlib.sha256(data).hexdigest()})
    assert attr["checksum_sha256"] == hashlib.sha256(data).hexdigest()


def test_list_pages_with_cursor(api):
    ids = [api.upload_ok(f"n{i}".encode(), f"list-{i}.txt")["file_id"] for i in range(7)]
    seen = []
    cursor = None
    while True:
        path = "/api/v1/files?limit=3&order=asc" + (f"&cursor={cursor}" if cursor else "")
        page = api.get(path).json()
        seen.extend(item["file_id"] for item in page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert [i for i in seen if i in ids] == ids
    assert len(seen) == len(set(seen))
    newest = api.get("/api/v1/files?limit=1").json()["items"][0]
    assert newest["file_id"] >= ids[-1]


def test_list_refuses_bad_parameters(api):
    for query, code in (("limit=0", "invalid_limit"), ("limit=1001", "invalid_limit"),
                        ("limit=abc", "invalid_limit"), ("cursor=garbage", "invalid_cursor"),
                        ("order=sideways", "invalid_order")):
        r = api.get(f"/api/v1/files?{query}")
        assert r.status == 400, query
        assert r.problem["code"] == code


def test_unknown_file_is_404_problem(api):
    for file_id in ("01a20691-6899-722d-be62-aaef65c3d7f4", "not-a-uuid", "..%2F..%2Fetc"):
        r = api.get(f"/api/v1/files/{file_id}")
        assert r.status == 404
        assert r.problem["code"] == "file_not_found"


def test_patch_merges_and_bumps_version(api):
    attr = api.upload_ok(b"p", "p.txt", fields={"custom_attributes": {"a": 1, "b": 2}})
    r = api.request("PATCH", f"/api/v1/files/{attr['file_id']}",
                    json_body={"description": "new", "custom_attributes": {"a": None, "c": 3}},
                    headers={"Content-Type": "application/merge-patch+json"})
    assert r.status == 200, r.body
    new = r.json()
    assert new["version"] == 2 and new["description"] == "new"
    assert new["custom_attributes"] == {"b": 2, "c": 3}
    assert new["checksum_sha256"] == attr["checksum_sha256"]
    assert r.headers["etag"] == '"v2"'
    # Optimistic concurrency: an If-Match with the old version is refused.
    stale = api.request("PATCH", f"/api/v1/files/{attr['file_id']}",
                        json_body={"description": "lost update"},
                        headers={"Content-Type": "application/merge-patch+json",
                                 "If-Match": '"v1"'})
    assert stale.status == 412 and stale.problem["code"] == "precondition_failed"
    assert api.get(f"/api/v1/files/{attr['file_id']}").json()["description"] == "new"


def test_patch_refuses_fixed_fields_and_bad_json(api):
    attr = api.upload_ok(b"q", "q.txt")
    fid = attr["file_id"]
    h = {"Content-Type": "application/merge-patch+json"}
    r = api.request("PATCH", f"/api/v1/files/{fid}", json_body={"file_size": 1}, headers=h)
    assert r.status == 422 and r.problem["code"] == "field_not_patchable"
    r = api.request("PATCH", f"/api/v1/files/{fid}", body=b"{nope", headers=h)
    assert r.status == 400 and r.problem["code"] == "invalid_json"
    r = api.request("PATCH", f"/api/v1/files/{fid}", json_body={"custom_attributes": [1]},
                    headers=h)
    assert r.status == 422 and r.problem["code"] == "custom_attributes_not_object"
    r = api.request("PATCH", f"/api/v1/files/{fid}", json_body={"description": "x" * 1001},
                    headers=h)
    assert r.status == 422 and r.problem["code"] == "description_too_long"
    assert api.get(f"/api/v1/files/{fid}").json()["version"] == 1
