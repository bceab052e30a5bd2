"""Start-up (probes during recovery), jobs, and a clean stop."""

import os
import threading
import time

from artstored.engine import Actor, Store, StoreConfig, UploadRequest
from harness import Api, Daemon, multipart, tmp_files, wait_until

ALICE = Actor("cl_alice", "alice", "user")


def _leave_pending_uploads(data_dir: str, count: int) -> None:
    """Leave committed uploads behind as a crash would (still in tmp/, intents recorded)."""
    store = Store(StoreConfig(data_dir=data_dir))
    items = []
    for i in range(count):
        writer = store.begin_upload()
        writer.write(os.urandom(100))
        writer.finish()
        items.append(store.prepare_upload(writer, UploadRequest(f"f-{i}.bin"), ALICE))
    store.committer.stage(items)
    store.committer.flush(items)
    store.committer.commit_txn(items)
    store.committer.stop()
    store.env.close()
    os.close(store._lock_fd)


def test_probes_during_recovery(tmp_path):
    data_dir = str(tmp_path / "node")
    _leave_pending_uploads(data_dir, count=400)
    d = Daemon(data_dir).start(wait=False)
    try:
        api = Api(d.port)
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                files = api.get("/api/v1/files")
                live = api.get("/health/live").status
                startup = api.get("/health/startup").status
                ready = api.get("/health/ready")
            except OSError:
                time.sleep(0.01)
                continue
            seen.append((live, startup, ready.status))
            if ready.status == 200:
                break
            # Not ready after the API request: it was refused politely, not served.
            assert files.status == 503 and files.problem["code"] == "not_ready"
            time.sleep(0.01)
        assert seen, "the daemon never answered"
        assert seen[0] == (200, 503, 503), seen[:3]
        assert seen[-1][2] == 200, f"not ready within 60 s: {seen[-3:]}"
        assert api.get("/health/startup").status == 200
        element = d.api().get("/api/v1/element").json()
        assert element["recovery"]["rolled_forward"] == 400 and element["files"] == 400
    finally:
        d.kill()


def test_sigterm_lets_an_upload_finish_and_exits_0(daemon):
    api = daemon.api()
    data = os.urandom(8 << 20)
    body, ctype = multipart(content=data, filename="slow.bin")
    result = {}

    def slow_upload():
        conn = api.connection()
        try:
            conn.putrequest("POST", "/api/v1/files")
            conn.putheader("Authorization", f"Bearer {api.token}")
            conn.putheader("Content-Type", ctype)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders()
            for i in range(0, len(body), 256 << 10):
                conn.send(body[i:i + (256 << 10)])
                time.sleep(0.02)  # a slow client: the pace is part of the test
                if i == 0:
                    started.set()
            resp = conn.getresponse()
            result["status"] = resp.status
            resp.read()
        except OSError as exc:  # cut off: the stop did not let it finish
            result["error"] = repr(exc)
        finally:
            conn.close()

    started = threading.Event()
    t = threading.Thread(target=slow_upload)
    t.start()
    assert started.wait(10), "the upload did not start"
    # SIGTERM only once the daemon is receiving the upload (its temporary file exists).
    wait_until(lambda: tmp_files(daemon.data_dir), 10, "the upload's temporary file")
    assert result == {}, f"the upload ended before the stop began: {result}"
    assert daemon.stop() == 0
    t.join(30)
    assert not t.is_alive(), "the upload never got its answer"
    assert result.get("status") == 201, result
    daemon.start()
    items = daemon.api().get("/api/v1/files").json()["items"]
    assert [i["original_filename"] for i in items] == ["slow.bin"]
    lines = daemon.log_lines()
    assert any('"stopped"' in line for line in lines)


def test_gc_and_rebuild_jobs(daemon):
    api = daemon.api()
    api.upload_ok(b"x", "x.txt")
    for kind in ("gc", "rebuild"):
        r = api.request("POST", f"/api/v1/element/{kind}")
        assert r.status == 202, r.body
        job = r.json()
        assert r.headers["location"] == f"/api/v1/jobs/{job['job_id']}"
        job = wait_until(lambda: (j := api.get(r.headers["location"]).json())["state"]
                         not in ("queued", "running") and j, 30, f"the {kind} job to end")
        assert job["state"] == "succeeded", job
        if kind == "gc":
            assert job["report"]["removed"] == 0
        else:
            assert job["report"]["files"] == 1
    r = api.get("/api/v1/jobs/job_nonexistent")
    assert r.status == 404 and r.problem["code"] == "job_not_found"


def test_unknown_routes_and_methods_are_problems(daemon):
    api = daemon.api()
    r = api.get("/api/v1/nothing-here")
    assert r.status == 404 and r.problem["code"] == "not_found"
    r = api.request("PUT", "/api/v1/files")
    assert r.status == 405 and r.problem["code"] == "method_not_allowed"


def test_request_id_is_echoed_and_logged(daemon):
    api = daemon.api()
    r = api.get("/api/v1/files", headers={"X-Request-Id": "trace-me-123"})
    assert r.headers["x-request-id"] == "trace-me-123"
    assert api.get("/api/v1/files").headers["x-request-id"]
    wait_until(lambda: any("trace-me-123" in line for line in daemon.log_lines()), 10,
               "request trace-me-123 in the log")
