"""Preservation against a real daemon: jobs that last, verify, scrub and quarantine.

Damage is injected into real files on disk; each kind must be found and named, nothing is
ever deleted by a check, a quarantined file reads as a clear error, a scrub resumes after
a restart without re-hashing what it did, a cancel stops a job within a second.
"""

import errno
import json
import os
import time

import pytest

from artstored.engine import ReadView
from artstored.fuse.model import ArchiveModel, FsError
from harness import wait_until


def _path(daemon, attr) -> str:
    for dirpath, _, names in os.walk(os.path.join(daemon.data_dir, "disks")):
        if attr["storage_filename"] in names and "/objects/" in dirpath + "/":
            return os.path.join(dirpath, attr["storage_filename"])
    raise FileNotFoundError(attr["storage_filename"])


def _flip(path: str, at: int = 10) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x40]))


def _run(api, kind: str, body=None, timeout: float = 60) -> dict:
    r = api.request("POST", f"/api/v1/element/{kind}", json_body=body or {})
    assert r.status == 202, r.body
    job_id = r.json()["job_id"]
    return wait_until(lambda: (lambda j: j if j["state"] in ("succeeded", "failed",
                                                              "cancelled") else None)(
        api.get(f"/api/v1/jobs/{job_id}").json()), timeout, f"the {kind} job to end")


def _every_file(root: str) -> set[str]:
    return {os.path.join(d, n) for d, _, names in os.walk(root) for n in names}


def test_verify_names_every_kind_of_damage_and_repairs_nothing(daemon):
    api = daemon.api()
    files = {name: api.upload_ok(os.urandom(5000), f"{name}.bin")
             for name in ("flipped", "truncated", "no_sidecar", "forged", "stale", "fine")}
    paths = {name: _path(daemon, attr) for name, attr in files.items()}
    _flip(paths["flipped"])
    with open(paths["truncated"], "r+b") as f:
        f.truncate(100)
    os.unlink(paths["no_sidecar"] + ".attr.json")
    for name, field, value in (("forged", "file_size", 4999), ("stale", "description", "x")):
        with open(paths[name] + ".attr.json") as f:
            doc = json.load(f)
        doc[field] = value   # file_size is signed; the description is not, but differs
        with open(paths[name] + ".attr.json", "w") as f:
            json.dump(doc, f)
    orphan = os.path.join(os.path.dirname(paths["fine"]), "stray-orphan.bin")
    with open(orphan, "wb") as f:
        f.write(b"nobody owns me")
    before = _every_file(os.path.join(daemon.data_dir, "disks"))

    job = _run(api, "verify", {"deep": True})
    assert job["state"] == "succeeded", job
    report = job["report"]
    named = {kind: {e["file_id"] for e in examples}
             for kind, examples in report["examples"].items()}
    assert files["flipped"]["file_id"] in named["checksum_mismatch"]
    assert files["truncated"]["file_id"] in named["size_mismatch"]
    assert files["no_sidecar"]["file_id"] in named["sidecar_missing"]
    assert files["forged"]["file_id"] in named["signature_invalid"]
    assert files["stale"]["file_id"] in named["catalog_stale"]
    assert orphan in [e["path"] for e in report["examples"]["orphan_data"]]
    assert files["fine"]["file_id"] not in set().union(*named.values())
    assert report["ok"] is False and report["checked"] == 6
    assert _every_file(os.path.join(daemon.data_dir, "disks")) == before, \
        "verify changed files on disk"
    # A validation event with its outcome is on the audit trail.
    events = api.get("/api/v1/audit?kind=preservation&limit=100").json()["items"]
    assert any(e["data"]["premis_event_type"] == "validation" and
               e["data"]["outcome"] == "failure" for e in events)
    # Without deep, the flipped byte goes unseen (same size): deep is what hashes.
    quick = _run(api, "verify")["report"]
    assert "checksum_mismatch" not in quick["problems"]


def test_scrub_quarantines_damage_and_reads_answer_a_clear_error(daemon):
    api = daemon.api()
    good = api.upload_ok(b"good bytes" * 100, "good.txt")
    bad = api.upload_ok(b"will be damaged" * 100, "bad.txt")
    short = api.upload_ok(b"will be cut short" * 100, "short.txt")
    bad_path, short_path = _path(daemon, bad), _path(daemon, short)
    _flip(bad_path)
    with open(short_path, "r+b") as f:
        f.truncate(10)
    job = _run(api, "scrub", {"rate_mb_per_s": 0})
    assert job["state"] == "succeeded", job
    report = job["report"]
    assert report["outcomes"] == {"ok": 1, "corrupt": 2}
    assert {p["file_id"] for p in report["problems"]} == {bad["file_id"], short["file_id"]}
    # Moved aside with its sidecar, never deleted.
    qdir = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.dirname(bad_path)))))), "quarantine", bad["file_id"])
    assert sorted(os.listdir(qdir)) == sorted([os.path.basename(bad_path),
                                               os.path.basename(bad_path) + ".attr.json"])
    assert not os.path.exists(bad_path)
    r = api.download(bad["file_id"])
    assert r.status == 409 and r.problem["code"] == "file_quarantined"
    assert api.get(f"/api/v1/files/{bad['file_id']}").status == 200   # metadata stays
    patch = api.request("PATCH", f"/api/v1/files/{bad['file_id']}",
                        body=b'{"description": "x"}',
                        headers={"Content-Type": "application/merge-patch+json"})
    assert patch.status == 409 and patch.problem["code"] == "file_quarantined"
    assert api.download(good["file_id"]).status == 200
    # The FUSE view: EIO for the quarantined file, the good one reads.
    view = ReadView.open(daemon.data_dir)
    try:
        model = ArchiveModel(daemon.data_dir, view=view)
        by_id = dict(model.readdir(dict(model.readdir(1))["by-id"].ino))
        names = {n[:36]: node for n, node in by_id.items()}
        with pytest.raises(FsError) as info:
            model.open_content(names[bad["file_id"]])
        assert info.value.errno == errno.EIO
        os.close(model.open_content(names[good["file_id"]]))
    finally:
        view.close()
    # Events: a failed fixity check and a quarantine per damaged file, a check per good one.
    events = api.get("/api/v1/audit?kind=preservation&limit=100").json()["items"]
    kinds = [(e["file_id"], e["data"]["premis_event_type"], e["data"]["outcome"])
             for e in events]
    assert (bad["file_id"], "quarantine", "success") in kinds
    assert (bad["file_id"], "fixity check", "failure") in kinds
    assert (good["file_id"], "fixity check", "ok") in kinds
    # Fixity metrics.
    metrics = daemon.api(None).get("/metrics").body.decode()
    assert "artstore_scrub_objects_corrupt 2.0" in metrics


def test_a_scrub_resumes_after_a_restart_without_rehashing(make_daemon):
    daemon = make_daemon("node")
    api = daemon.api()
    ids = [api.upload_ok(os.urandom(200_000), f"f{i}.bin")["file_id"] for i in range(40)]
    # 2 MB/s over 8 MB: about 4 s; stop the daemon when some are done.
    r = api.request("POST", "/api/v1/element/scrub",
                    json_body={"rate_mb_per_s": 2, "concurrency": 1})
    job_id = r.json()["job_id"]
    wait_until(lambda: api.get(f"/api/v1/jobs/{job_id}").json()["progress"]["done_files"]
               >= 5, 30, "the scrub to check five files")
    daemon.kill()     # a crash mid-scrub
    daemon.start()
    api = daemon.api()
    job = wait_until(lambda: (lambda j: j if j["state"] == "succeeded" else None)(
        api.get(f"/api/v1/jobs/{job_id}").json()), 60, "the resumed scrub to finish")
    assert job["resumed"] == 1 and job["report"]["outcomes"] == {"ok": 40}
    events = api.get("/api/v1/audit?kind=preservation&limit=1000").json()["items"]
    checks = [e["file_id"] for e in events if e["data"]["premis_event_type"] == "fixity check"]
    assert sorted(checks) == sorted(ids), "a file was hashed twice or not at all"


def test_jobs_run_one_per_kind_and_a_cancel_stops_within_a_second(daemon):
    api = daemon.api()
    for i in range(20):
        api.upload_ok(os.urandom(100_000), f"c{i}.bin")
    r = api.request("POST", "/api/v1/element/scrub", json_body={"rate_mb_per_s": 0.1})
    assert r.status == 202
    job_id = r.json()["job_id"]
    again = api.request("POST", "/api/v1/element/scrub", json_body={})
    assert again.status == 409 and again.problem["code"] == "job_running"
    started = time.monotonic()
    cancelled = api.request("DELETE", f"/api/v1/jobs/{job_id}")
    assert cancelled.status == 200 and cancelled.json()["state"] == "cancelled", cancelled.body
    assert time.monotonic() - started < 1.0
    listed = api.get("/api/v1/jobs?kind=scrub").json()["items"]
    assert [j["job_id"] for j in listed] == [job_id]
    assert api.request("DELETE", f"/api/v1/jobs/{job_id}").problem["code"] == "job_finished"
    bad = api.request("POST", "/api/v1/element/scrub", json_body={"rate_mb_per_s": "fast"})
    assert bad.status == 422 and bad.problem["code"] == "invalid_job"
    assert api.request("POST", "/api/v1/element/nope").status == 404


def test_job_cli_watch_and_list(daemon):
    api = daemon.api()
    api.upload_ok(b"x" * 1000, "w.bin")
    env = {"ARTSTORE_CLIENT_ID": daemon.admin_credentials()["client_id"],
           "ARTSTORE_CLIENT_SECRET": daemon.admin_credentials()["client_secret"]}
    started = daemon.cli("job", "start", "verify", "--deep", "--watch", "--json", env=env)
    assert started.returncode == 0, started.stderr
    lines = [json.loads(line) for line in started.stdout.decode().splitlines()
             if line.startswith("{") and '"job_id"' in line]
    assert lines[-1]["state"] == "succeeded" and lines[-1]["report"]["ok"] is True
    listed = daemon.cli("job", "list", "--kind", "verify", env=env)
    assert listed.returncode == 0 and "succeeded" in listed.stdout.decode()


def test_an_export_job_writes_a_valid_bag_of_a_querys_hits(daemon):
    import subprocess
    import sys

    api = daemon.api()
    hits = [api.upload_ok(b"minutes %d" % i, "minutes.txt",
                          fields={"description": "board minutes"}) for i in range(3)]
    api.upload_ok(b"unrelated", "other.txt", fields={"description": "holiday photo"})
    wait_until(lambda: len(api.get("/api/v1/search?q=minutes").json()["items"]) == 3, 10,
               "the index to see the uploads")
    job = _run(api, "export", {"name": "board-2026", "query": "minutes",
                               "organization": "Test Archive"})
    assert job["state"] == "succeeded", job
    bag = os.path.join(daemon.data_dir, "exports", "board-2026")
    assert job["report"]["files"] == 3 and job["report"]["bag"] == bag
    bagit = os.path.join(os.path.dirname(sys.executable), "bagit.py")
    ok = subprocess.run([sys.executable, bagit, "--validate", bag], capture_output=True)
    assert ok.returncode == 0, ok.stderr
    assert len(os.listdir(os.path.join(bag, "data"))) == 3   # clashing names resolved
    assert "Source-Organization: Test Archive" in open(os.path.join(bag, "bag-info.txt")).read()
    events = api.get("/api/v1/audit?kind=preservation&limit=100").json()["items"]
    assert any(e["data"]["premis_event_type"] == "replication" for e in events)
    again = api.request("POST", "/api/v1/element/export", json_body={"name": "board-2026"})
    job = wait_until(lambda: (lambda j: j if j["state"] in ("succeeded", "failed") else None)(
        api.get(f"/api/v1/jobs/{again.json()['job_id']}").json()), 30, "the second export")
    assert job["state"] == "failed" and "empty" in job["error"]   # nothing overwritten
    bad = api.request("POST", "/api/v1/element/export", json_body={"name": "../escape"})
    assert bad.status == 422 and bad.problem["code"] == "invalid_job"
    assert hits


def test_fixity_endpoint_tells_what_can_be_proven(daemon):
    api = daemon.api()
    attr = api.upload_ok(b"provable", "p.txt")
    r = api.get(f"/api/v1/files/{attr['file_id']}/fixity")
    assert r.status == 200, r.body
    doc = r.json()
    assert doc["digests"]["sha256"] == attr["checksum_sha256"]
    assert doc["signature"]["valid"] is True and doc["last_verification"] is None
    element = api.get("/api/v1/element").json()
    assert doc["public_key"] == element["public_key"]
    with open(os.path.join(daemon.data_dir, "node.json")) as f:
        assert json.load(f)["public_key"] == element["public_key"]["value"]
    _run(api, "scrub", {"rate_mb_per_s": 0})
    doc = api.get(f"/api/v1/files/{attr['file_id']}/fixity").json()
    assert doc["last_verification"]["outcome"] == "ok"
    assert api.get("/api/v1/files/01a21da2-0000-7000-8000-000000000000/fixity").status == 404


def test_ingestion_and_deletion_are_premis_events(make_daemon):
    d = make_daemon("edit", config={"element": {"initial_mode": "edit"}})
    api = d.api()
    attr = api.upload_ok(b"short-lived", "t.txt")
    assert api.request("DELETE", f"/api/v1/files/{attr['file_id']}").status in (200, 204)
    events = api.get(f"/api/v1/audit?file_id={attr['file_id']}&limit=10").json()["items"]
    premis = {e["kind"]: e["premis"] for e in events if "premis" in e}
    assert premis["file.create"] == {"event_type": "ingestion", "outcome": "success"}
    assert premis["file.delete"] == {"event_type": "deletion", "outcome": "success"}
