"""Resumable upload sessions (``/api/v1/uploads``) and ``artstore upload`` resuming, against
a real daemon. Interruptions are real: a TCP proxy between the client and the daemon cuts
or stalls a transfer part-way, and the command itself is SIGKILLed."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading

from harness import ARTSTORE, wait_until


class CuttingProxy:
    """Forwards loopback TCP to ``port``. While ``cut_after`` is set, a connection that
    starts with ``PUT`` is cut (``mode`` "cut": both sides closed) or stalled ("stall":
    nothing more forwarded until ``release``) once it has forwarded that many bytes.
    Every request line it forwarded is in ``request_lines``."""

    def __init__(self, port: int):
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_after: int | None = None
        self.mode = "cut"
        self.request_lines: list[str] = []
        self._stalled: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump_up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(upstream, client),
                             daemon=True).start()

    def _pump_up(self, client, upstream):
        sent, first, limit = 0, True, None
        try:
            while data := client.recv(65536):
                if first:
                    line = data.split(b"\r\n", 1)[0].decode("latin-1")
                    with self._lock:
                        self.request_lines.append(line)
                    limit = self.cut_after if line.startswith("PUT ") else None
                    first = False
                if limit is not None and sent + len(data) > limit:
                    upstream.sendall(data[:limit - sent])
                    if self.mode == "cut":
                        break
                    with self._lock:
                        self._stalled.append(upstream)
                    threading.Event().wait()   # stall: hold both sockets, forward nothing
                upstream.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (client, upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    @staticmethod
    def _pump_down(upstream, client):
        try:
            while data := upstream.recv(65536):
                client.sendall(data)
        except OSError:
            pass

    def release(self):
        """Close the daemon's side of every stalled transfer (it sees the client gone)."""
        with self._lock:
            stalled, self._stalled = self._stalled, []
        for s in stalled:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def offsets(self) -> list[int]:
        return [int(m.group(1)) for line in self.request_lines
                if (m := re.search(r"PUT /api/v1/uploads/\w+\?offset=(\d+)", line))]


def _json(daemon, method, path, body=None, token="admin"):
    r = daemon.api(token).request(method, path, json_body=body)
    return r.status, (r.json() if r.body else None)


def _put(daemon, upload_id: str, offset: int, data: bytes, token: str | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=60)
    conn.request("PUT", f"/api/v1/uploads/{upload_id}?offset={offset}", body=data,
                 headers={"Authorization": f"Bearer {token or daemon.admin_token()}",
                          "Content-Type": "application/octet-stream"})
    r = conn.getresponse()
    return r.status, json.loads(r.read() or b"null")


def test_session_keeps_every_byte_that_arrived_and_makes_one_file(daemon):
    content = os.urandom(3_000_000)
    sha = hashlib.sha256(content).hexdigest()
    status, doc = _json(daemon, "POST", "/api/v1/uploads",
                        {"original_filename": "scan.tiff", "size": len(content),
                         "sha256": sha, "custom_attributes": {"batch": 7}})
    assert status == 201, doc
    uid = doc["upload_id"]
    # Refusals before a byte: bad fields, a size over the limit.
    assert _json(daemon, "POST", "/api/v1/uploads",
                 {"original_filename": "x", "size": -1})[1]["code"] == "invalid_size"
    assert _json(daemon, "POST", "/api/v1/uploads",
                 {"original_filename": "", "size": 1})[1]["code"] == "invalid_filename"
    assert _json(daemon, "POST", "/api/v1/uploads",
                 {"original_filename": "x", "size": 1, "colour": 1})[1]["code"] == \
        "unknown_field"
    # Fields of the wrong JSON type are refused as such (the fuzzer once got a 500).
    for field, value, code in (("original_filename", ["a"], "invalid_filename"),
                               ("original_filename", True, "invalid_filename"),
                               ("content_type", 7, "invalid_content_type"),
                               ("description", {"a": 1}, "invalid_description"),
                               ("ttl_days", True, "invalid_retention")):
        body = {"original_filename": "x", "size": 1, field: value}
        if field == "ttl_days":
            body["retention_policy"] = "temporary"
        status, problem = _json(daemon, "POST", "/api/v1/uploads", body)
        assert (status, problem["code"]) == (422, code), (field, value, status, problem)
    # A transfer cut short: announce everything, send half, drop the connection once the
    # daemon has written some of it.
    conn = socket.create_connection(("127.0.0.1", daemon.port))
    head = (f"PUT /api/v1/uploads/{uid}?offset=0 HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {daemon.admin_token()}\r\n"
            f"Content-Length: {len(content)}\r\n\r\n").encode()
    conn.sendall(head + content[:1_500_000])
    data = os.path.join(daemon.data_dir, "disks", "0", "sessions", uid, "data")
    wait_until(lambda: os.path.exists(data) and os.path.getsize(data) >= 1 << 20, 10,
               "the first bytes written")
    conn.close()
    wait_until(lambda: _json(daemon, "GET", f"/api/v1/uploads/{uid}")[1]["received"], 10,
               "the cut transfer's bytes counted")
    kept = _json(daemon, "GET", f"/api/v1/uploads/{uid}")[1]["received"]
    assert 1 << 20 <= kept <= 1_500_000
    # The session survives a restart of the daemon.
    daemon.stop()
    daemon.start()
    status, doc = _json(daemon, "GET", f"/api/v1/uploads/{uid}")
    assert status == 200 and doc["received"] == kept
    status, doc = _put(daemon, uid, 0, content)
    assert status == 409 and doc["code"] == "offset_mismatch" and doc["received"] == kept
    status, doc = _json(daemon, "POST", f"/api/v1/uploads/{uid}/complete")
    assert status == 409 and doc["code"] == "session_incomplete"
    status, doc = _put(daemon, uid, kept, content[kept:] + b"extra")
    assert status == 413, doc
    assert _json(daemon, "GET", f"/api/v1/uploads/{uid}")[1]["received"] == kept
    status, doc = _put(daemon, uid, kept, content[kept:])
    assert status == 200 and doc["received"] == len(content)
    # Another account does not see the session.
    other_id, other_secret = daemon.create_account("someone", "user")
    other = daemon.token_for(other_id, other_secret)
    assert _json(daemon, "GET", f"/api/v1/uploads/{uid}", token=other)[0] == 404
    status, attr = _json(daemon, "POST", f"/api/v1/uploads/{uid}/complete")
    assert status == 201, attr
    assert attr["checksum_sha256"] == sha and attr["file_size"] == len(content)
    assert attr["custom_attributes"] == {"batch": 7}
    r = daemon.api().download(attr["file_id"])
    assert r.body == content
    # The session stays, without its bytes, naming its file: a client that lost the answer
    # asks again and gets the same file, not a second one.
    status, doc = _json(daemon, "GET", f"/api/v1/uploads/{uid}")
    assert status == 200 and doc["file_id"] == attr["file_id"]
    status, again = _json(daemon, "POST", f"/api/v1/uploads/{uid}/complete")
    assert status == 201 and again["file_id"] == attr["file_id"]
    assert _put(daemon, uid, len(content), b"x")[1]["code"] == "session_completed"
    assert len(daemon.api().get("/api/v1/files").json()["items"]) == 1
    assert os.listdir(os.path.join(daemon.data_dir, "disks", "0", "sessions")) == []
    # An empty file goes through a session too.
    status, doc = _json(daemon, "POST", "/api/v1/uploads",
                        {"original_filename": "empty", "size": 0})
    status, attr = _json(daemon, "POST", f"/api/v1/uploads/{doc['upload_id']}/complete")
    assert status == 201 and attr["file_size"] == 0, attr


def test_a_wrong_declared_checksum_stores_nothing_and_abort_removes_the_bytes(daemon):
    content = os.urandom(100_000)
    status, doc = _json(daemon, "POST", "/api/v1/uploads",
                        {"original_filename": "f", "size": len(content), "sha256": "0" * 64})
    uid = doc["upload_id"]
    assert _put(daemon, uid, 0, content)[0] == 200
    status, doc = _json(daemon, "POST", f"/api/v1/uploads/{uid}/complete")
    assert status == 422 and doc["code"] == "checksum_mismatch"
    assert daemon.api().get("/api/v1/files").json()["items"] == []
    r = daemon.api().request("DELETE", f"/api/v1/uploads/{uid}")
    assert r.status == 204
    assert os.listdir(os.path.join(daemon.data_dir, "disks", "0", "sessions")) == []
    assert _json(daemon, "GET", f"/api/v1/uploads/{uid}")[0] == 404


def _cli(daemon, proxy_port: int, path: str, state: str, **kw):
    creds = os.path.join(daemon.data_dir, "initial-admin.json")
    env = dict(os.environ, ARTSTORE_URL=f"http://127.0.0.1:{proxy_port}",
               XDG_STATE_HOME=state)
    env.pop("ARTSTORE_CLIENT_ID", None)
    return subprocess.Popen([ARTSTORE, "upload", "--resumable", "--json", "--credentials",
                             creds, path], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


def test_artstore_upload_resumes_within_a_run_and_after_being_killed(daemon, tmp_path):
    content = os.urandom(6_000_000)
    path = tmp_path / "big.bin"
    path.write_bytes(content)
    state = str(tmp_path / "state")
    proxy = CuttingProxy(daemon.port)

    # Within a run: the first transfer is cut after 2 MB; the command resumes by itself.
    proxy.cut_after, proxy.mode = 2_000_000, "cut"
    proc = _cli(daemon, proxy.port, str(path), state)
    wait_until(lambda: len(proxy.offsets()) >= 1, 30, "the first transfer")
    proxy.cut_after = None          # later transfers go through
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    attr = json.loads(out)
    assert attr["checksum_sha256"] == hashlib.sha256(content).hexdigest()
    offsets = proxy.offsets()
    assert offsets[0] == 0 and len(offsets) >= 2 and 0 < offsets[-1] <= 2_000_000
    assert os.listdir(os.path.join(state, "artstore", "uploads")) == []

    # Across runs: the transfer stalls, the command is killed, the daemon sees the client
    # gone; the same command run again continues from what the daemon kept.
    path2 = tmp_path / "second.bin"
    content2 = os.urandom(5_000_000)
    path2.write_bytes(content2)
    proxy.request_lines.clear()
    proxy.cut_after, proxy.mode = 3_000_000, "stall"
    proc = _cli(daemon, proxy.port, str(path2), state)
    wait_until(lambda: len(proxy.offsets()) == 1, 30, "the transfer to start")
    wait_until(lambda: any(f.endswith(".json") for f in
                           os.listdir(os.path.join(state, "artstore", "uploads"))),
               30, "the state file")
    sessions = os.path.join(daemon.data_dir, "disks", "0", "sessions")
    wait_until(lambda: any(os.path.getsize(os.path.join(sessions, d, "data")) > 0
                           for d in os.listdir(sessions)
                           if os.path.exists(os.path.join(sessions, d, "data"))),
               30, "bytes on the daemon's disk")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proxy.release()
    proxy.cut_after = None
    uid = os.listdir(sessions)[0]
    wait_until(lambda: _json(daemon, "GET", f"/api/v1/uploads/{uid}")[1]["received"] > 0,
               30, "the stalled transfer's bytes counted")
    kept = _json(daemon, "GET", f"/api/v1/uploads/{uid}")[1]["received"]
    assert 0 < kept < len(content2)
    proc = _cli(daemon, proxy.port, str(path2), state)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    attr = json.loads(out)
    assert attr["checksum_sha256"] == hashlib.sha256(content2).hexdigest()
    assert proxy.offsets() == [0, kept]
    files = daemon.api().get("/api/v1/files").json()["items"]
    assert sorted(f["original_filename"] for f in files) == ["big.bin", "second.bin"]
