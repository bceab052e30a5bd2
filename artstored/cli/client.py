"""A small blocking HTTP client for the ArtStore API (stdlib ``http.client``).

Streams uploads and downloads in 1 MiB chunks, so the CLI's memory does not grow with file
size. Every non-2xx answer becomes ApiError carrying the problem document.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import secrets
import urllib.parse

CHUNK = 1 << 20


class ApiError(Exception):
    """The server answered with an error; ``problem`` is its problem+json (or a stand-in)."""

    def __init__(self, status: int, problem: dict):
        self.status = status
        self.problem = problem
        super().__init__(problem.get("detail") or problem.get("title") or f"HTTP {status}")

    @property
    def code(self) -> str:
        return self.problem.get("code", f"http_{self.status}")


class ConnectError(Exception):
    """The daemon could not be reached."""


def _problem_of(status: int, body: bytes) -> dict:
    try:
        doc = json.loads(body.decode("utf-8"))
        if isinstance(doc, dict):
            return doc
    except (UnicodeDecodeError, json.JSONDecodeError):
        pass
    return {"status": status, "title": f"HTTP {status}",
            "detail": body[:200].decode("utf-8", "replace") or f"HTTP {status}"}


def multipart_parts(fields: dict, file_field: str, filename: str, content_type: str,
                    boundary: str) -> tuple[bytes, bytes]:
    """(everything before the file's bytes, everything after) of a multipart/form-data body.
    The filename goes in ``filename*`` (RFC 5987), so any Unicode name survives."""
    lines = []
    for name, value in fields.items():
        if value is None:
            continue
        lines.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\""
                     f"\r\n\r\n{value}\r\n")
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\%' else "_"
                       for c in filename) or "file"
    quoted = urllib.parse.quote(filename, safe="")
    lines.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{file_field}\"; "
                 f"filename=\"{fallback}\"; filename*=UTF-8''{quoted}\r\n"
                 f"Content-Type: {content_type}\r\n\r\n")
    head = "".join(lines).encode("utf-8")
    tail = f"\r\n--{boundary}--\r\n".encode("ascii")
    return head, tail


class Client:
    def __init__(self, url: str, *, client_id: str | None = None,
                 client_secret: str | None = None, token: str | None = None,
                 timeout: float = 300.0):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.scheme = parsed.scheme
        self.host = parsed.hostname
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.base = parsed.path.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self.token = token
        self.timeout = timeout

    def _connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else \
            http.client.HTTPConnection
        return cls(self.host, self.port, timeout=self.timeout)

    def _send(self, method: str, path: str, *, body=None, headers=None, auth=True):
        headers = dict(headers or {})
        if auth:
            headers["Authorization"] = f"Bearer {self.access_token()}"
        conn = self._connection()
        try:
            conn.request(method, self.base + path, body=body, headers=headers)
            return conn, conn.getresponse()
        except (ConnectionError, OSError) as exc:
            conn.close()
            raise ConnectError(f"cannot reach {self.scheme}://{self.host}:{self.port}: "
                               f"{exc}") from None

    def request(self, method: str, path: str, *, json_body=None, body=None,
                headers=None, auth=True, ok=(200, 201, 202, 204)):
        """One request; returns the decoded JSON answer (None for an empty one)."""
        headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode("utf-8")
            headers.setdefault("Content-Type", "application/json")
        conn, resp = self._send(method, path, body=body, headers=headers, auth=auth)
        try:
            data = resp.read()
        finally:
            conn.close()
        if resp.status not in ok:
            raise ApiError(resp.status, _problem_of(resp.status, data))
        return json.loads(data) if data else None

    # --- auth -----------------------------------------------------------------------------

    def fetch_token(self, scope: str | None = None) -> dict:
        if not self.client_id or not self.client_secret:
            raise ApiError(401, {"code": "no_credentials", "detail":
                                 "no credentials: set ARTSTORE_CLIENT_ID and "
                                 "ARTSTORE_CLIENT_SECRET, or pass --credentials FILE"})
        basic = base64.b64encode(
            f"{urllib.parse.quote_plus(self.client_id)}:"
            f"{urllib.parse.quote_plus(self.client_secret)}".encode()).decode()
        form = {"grant_type": "client_credentials"}
        if scope:
            form["scope"] = scope
        args = dict(auth=False, body=urllib.parse.urlencode(form).encode(),
                    headers={"Authorization": f"Basic {basic}",
                             "Content-Type": "application/x-www-form-urlencoded"})
        try:
            return self.request("POST", "/api/v1/auth/token", **args)
        except ApiError as exc:
            # A cluster member: tokens are the admin's, valid on every node. Sign in there
            # (the member names it), then keep talking to the member.
            authority = exc.problem.get("authority") if exc.status == 421 else None
            if not authority or not isinstance(authority[0], str):
                raise
            admin = Client(f"{self.scheme}://{authority[0]}{self.base}",
                           timeout=self.timeout)
            return admin.request("POST", "/api/v1/auth/token", **args)

    def access_token(self) -> str:
        if self.token is None:
            self.token = self.fetch_token()["access_token"]
        return self.token

    # --- files --------------------------------------------------------------------------

    def upload(self, path: str, *, filename: str | None = None, fields: dict | None = None,
               content_type: str = "application/octet-stream", progress=None) -> dict:
        """Stream the file at ``path`` as a multipart upload; returns the attr record."""
        boundary = "artstore-" + secrets.token_hex(16)
        head, tail = multipart_parts(fields or {}, "file", filename or os.path.basename(path),
                                     content_type, boundary)
        size = os.path.getsize(path)
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}",
                   "Content-Length": str(len(head) + size + len(tail)),
                   "Authorization": f"Bearer {self.access_token()}"}
        conn = self._connection()
        try:
            conn.putrequest("POST", self.base + "/api/v1/files")
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders()
            conn.send(head)
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    conn.send(chunk)
                    if progress:
                        progress(len(chunk))
            conn.send(tail)
            resp = conn.getresponse()
            data = resp.read()
        except (ConnectionError, OSError) as exc:
            # The server may have answered early (413, 409) and closed: read its answer.
            try:
                resp = conn.getresponse()
                data = resp.read()
            except Exception:
                raise ConnectError(f"upload interrupted: {exc}") from None
        finally:
            conn.close()
        if resp.status != 201:
            raise ApiError(resp.status, _problem_of(resp.status, data))
        return json.loads(data)

    def download(self, file_id: str, out, *, progress=None, headers=None) -> dict:
        """Stream the content into the binary file object ``out``; returns the response
        headers (lower-case names)."""
        conn, resp = self._send("GET", f"/api/v1/files/{urllib.parse.quote(file_id)}/download",
                                headers=headers)
        try:
            if resp.status not in (200, 206):
                raise ApiError(resp.status, _problem_of(resp.status, resp.read()))
            while chunk := resp.read(CHUNK):
                out.write(chunk)
                if progress:
                    progress(len(chunk))
            return {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
