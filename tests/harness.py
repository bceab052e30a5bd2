"""Test harness: real ``artstored`` processes on loopback, and a thin HTTP client.

Nothing here fakes a component of ours: a Daemon is the installed ``artstored`` entry
point in a subprocess with its own data directory and port.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass

BIN = os.path.dirname(sys.executable)

# Every secret and token the tests were given: none may ever show up in a daemon's log.
ISSUED_SECRETS: set[str] = set()
# Lines printed after the run's summary (counts a test wants the reader to see).
SUMMARY: list[str] = []
DAEMON_LOGS: set[str] = set()
ARTSTORED = os.path.join(BIN, "artstored")
ARTSTORE = os.path.join(BIN, "artstore")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02):
    """Poll ``predicate`` until it returns something truthy, and return that value.

    Raises AssertionError naming ``what`` (and the last value seen) if it is still falsy
    after ``timeout`` seconds: tests synchronise on the condition itself, never on a sleep.
    An exception from the predicate propagates at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} "
                                 f"(last value: {value!r:.300})")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Response:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def problem(self) -> dict:
        assert self.headers.get("content-type", "").startswith("application/problem+json"), \
            (self.status, self.headers, self.body[:300])
        doc = self.json()
        for member in ("type", "title", "status", "detail", "code"):
            assert member in doc, (member, doc)
        assert doc["status"] == self.status
        return doc


def multipart(fields: dict | None = None, *, content: bytes | None = None,
              filename: str | None = "file.bin", content_type: str = "application/octet-stream",
              boundary: str | None = None, file_first: bool = False) -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/form-data upload."""
    boundary = boundary or "b-" + secrets.token_hex(12)
    field_parts = []
    for name, value in (fields or {}).items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, ensure_ascii=False)
        field_parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\""
                           f"\r\n\r\n{value}\r\n".encode())
    file_part = b""
    if content is not None:
        disp = 'form-data; name="file"'
        if filename is not None:
            disp += "; filename*=UTF-8''" + urllib.parse.quote(filename, safe="")
        file_part = (f"--{boundary}\r\nContent-Disposition: {disp}\r\n"
                     f"Content-Type: {content_type}\r\n\r\n").encode() + content + b"\r\n"
    parts = [file_part] + field_parts if file_first else field_parts + [file_part]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class Api:
    """Blocking HTTP client bound to one daemon and (optionally) one token."""

    def __init__(self, port: int, token: str | None = None):
        self.port = port
        self.token = token

    def with_token(self, token: str | None) -> "Api":
        return Api(self.port, token)

    def connection(self, timeout: float = 120) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, body=None, headers: dict | None = None,
                json_body=None) -> Response:
        headers = dict(headers or {})
        if self.token and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {self.token}"
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers.setdefault("Content-Type", "application/json")
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()},
                            resp.read())
        finally:
            conn.close()

    def get(self, path: str, **kw) -> Response:
        return self.request("GET", path, **kw)

    def upload(self, content: bytes = b"hello", filename: str | None = "file.bin",
               fields: dict | None = None, **kw) -> Response:
        body, ctype = multipart(fields, content=content, filename=filename, **kw)
        return self.request("POST", "/api/v1/files", body=body,
                            headers={"Content-Type": ctype})

    def upload_ok(self, content: bytes = b"hello", filename: str = "file.bin", **kw) -> dict:
        r = self.upload(content, filename, **kw)
        assert r.status == 201, (r.status, r.body[:500])
        return r.json()

    def download(self, file_id: str, headers: dict | None = None) -> Response:
        return self.get(f"/api/v1/files/{file_id}/download", headers=headers)


def token_request(port: int, client_id: str, secret: str, source: str = "127.0.0.1"):
    """POST to the token endpoint from a given loopback source address."""
    body = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": client_id,
                                   "client_secret": secret}).encode()
    sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
    try:
        sock.sendall(b"POST /api/v1/auth/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    finally:
        sock.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    doc = json.loads(payload)
    if status == 200:
        ISSUED_SECRETS.add(doc["access_token"])
    return status, headers, doc


class Daemon:
    """An ``artstored`` subprocess with its own data directory and port."""

    def __init__(self, data_dir: str, *, config: dict | None = None, env: dict | None = None,
                 port: int | None = None):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.config = config or {}
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(os.path.dirname(data_dir.rstrip("/")),
                                     os.path.basename(data_dir.rstrip("/")) + ".log")
        self._token: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> str:
        path = self.data_dir.rstrip("/") + ".toml"
        lines = []
        for section, table in self.config.items():
            lines.append(f"[{section}]")
            for key, value in table.items():
                lines.append(f"{key} = {json.dumps(value)}")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def start(self, wait: bool = True) -> "Daemon":
        env = dict(os.environ)
        env.update({"ARTSTORE_DATA_DIR": self.data_dir, "ARTSTORE_LISTEN": f"127.0.0.1:{self.port}"})
        env.update(self.extra_env)
        DAEMON_LOGS.add(self.log_path)
        self._token = None  # the accounts may have changed (a rebuilt store has new ones)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([ARTSTORED, "--config", self._write_config()], env=env,
                                     stdout=log, stderr=log)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        api = Api(self.port)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"artstored exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            try:
                if api.get("/health/ready").status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError("artstored did not become ready:\n" + self.log_tail())

    def log_tail(self, n: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_lines(self) -> list[str]:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()

    def stop(self, timeout: float = 60) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else 0

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> "Daemon":
        self.stop()
        self._token = None
        return self.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def admin_credentials(self) -> dict:
        with open(os.path.join(self.data_dir, "initial-admin.json")) as f:
            return json.load(f)

    def token_for(self, client_id: str, secret: str, scope: str | None = None) -> str:
        form = {"grant_type": "client_credentials", "client_id": client_id,
                "client_secret": secret}
        if scope:
            form["scope"] = scope
        r = Api(self.port).request("POST", "/api/v1/auth/token",
                                   body=urllib.parse.urlencode(form).encode(),
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status == 200, r.body
        ISSUED_SECRETS.add(secret)
        ISSUED_SECRETS.add(r.json()["access_token"])
        return r.json()["access_token"]

    def admin_token(self) -> str:
        if self._token is None:
            creds = self.admin_credentials()
            self._token = self.token_for(creds["client_id"], creds["client_secret"])
        return self._token

    def api(self, token: str | None = "admin") -> Api:
        return Api(self.port, self.admin_token() if token == "admin" else token)

    def create_account(self, name: str, role: str) -> tuple[str, str]:
        r = self.api().request("POST", "/api/v1/accounts",
                               json_body={"name": name, "role": role})
        assert r.status == 201, r.body
        doc = r.json()
        ISSUED_SECRETS.add(doc["client_secret"])
        return doc["client_id"], doc["client_secret"]

    def cli(self, *args: str, check: bool = False, input: bytes | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        full_env = dict(os.environ)
        full_env.pop("ARTSTORE_CLIENT_ID", None)
        full_env.update({"ARTSTORE_URL": self.url})
        full_env.update(env or {})
        cmd = [ARTSTORE, *args]
        return subprocess.run(cmd, env=full_env, capture_output=True, input=input,
                              check=check, timeout=600)


def objects_files(data_dir: str) -> list[str]:
    """Every file under any disk's objects/ (data and sidecars), relative to the root."""
    out = []
    disks = os.path.join(data_dir, "disks")
    for dirpath, _, names in os.walk(disks):
        for name in names:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, disks)
            if "/objects/" in "/" + rel:
                out.append(rel)
    return sorted(out)


def tmp_files(data_dir: str) -> list[str]:
    out = []
    disks = os.path.join(data_dir, "disks")
    for d in os.listdir(disks) if os.path.isdir(disks) else ():
        tmp = os.path.join(disks, d, "tmp")
        if os.path.isdir(tmp):
            out.extend(os.listdir(tmp))
    return out


def store_snapshot(data_dir: str) -> dict:
    """What the store holds, read from another process as the FUSE mount reads it (the
    engine's ReadView, read-only): catalog ids, PENDING intents, the newest WAL sequence."""
    from artstored.engine.view import ReadView

    with ReadView.open(data_dir) as view, view.snapshot() as snap:
        catalog_ids = [e.file_id for e in snap.entries()]
        pending = snap.pending_intents()
        seq = snap.wal_head().seq
    return {"catalog": catalog_ids, "pending": pending, "wal_seq": seq}
