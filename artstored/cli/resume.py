"""Resumable uploads for ``artstore upload``: a large file goes through an upload session
(``/api/v1/uploads``), so a dropped connection or an interrupted command loses nothing.

Within one run, a transfer that fails is resumed from what the daemon holds (it keeps every
byte that reached its disk), up to ``RETRIES`` times. Across runs, the session's id is kept
in a small state file (``$XDG_STATE_HOME/artstore/uploads/``, else
``~/.local/state/artstore/uploads/``), named after the daemon's URL and the file's path,
size and modification time: running the same ``artstore upload`` again continues where it
stopped. A changed file starts over. The state file is removed once the file is stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from .client import ApiError, Client, ConnectError, _problem_of

RESUMABLE_BYTES = 64 << 20     # files at least this large go through a session by default
RETRIES = 5
CHUNK = 1 << 20


def state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"),
                                                            ".local", "state")
    return os.path.join(base, "artstore", "uploads")


def _state_path(client: Client, path: str, st: os.stat_result) -> str:
    name = f"{client.scheme}://{client.host}:{client.port}{client.base}|" \
           f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"
    return os.path.join(state_dir(), hashlib.sha256(name.encode()).hexdigest()[:32] + ".json")


def _load(state_path: str) -> str | None:
    try:
        with open(state_path, encoding="utf-8") as f:
            return json.load(f).get("upload_id")
    except (OSError, ValueError):
        return None


def _save(state_path: str, upload_id: str, path: str) -> None:
    os.makedirs(os.path.dirname(state_path), mode=0o700, exist_ok=True)
    tmp = state_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"upload_id": upload_id, "path": os.path.abspath(path)}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, state_path)


def _session(client: Client, state_path: str, path: str, fields: dict) -> dict:
    """The session to continue (from the state file), or a new one."""
    upload_id = _load(state_path)
    if upload_id:
        try:
            return client.request("GET", f"/api/v1/uploads/{upload_id}")
        except ApiError as exc:
            if exc.status != 404:
                raise
            # Expired, completed or aborted meanwhile: start over.
    session = client.request("POST", "/api/v1/uploads", json_body=fields)
    _save(state_path, session["upload_id"], path)
    return session


def _send_from(client: Client, session: dict, path: str, progress) -> dict:
    """PUT the file from the session's received offset to its end; the new state."""
    offset, size = session["received"], session["size"]
    conn = client._connection()
    try:
        conn.putrequest("PUT", f"{client.base}/api/v1/uploads/{session['upload_id']}"
                               f"?offset={offset}")
        conn.putheader("Authorization", f"Bearer {client.access_token()}")
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", str(size - offset))
        conn.endheaders()
        with open(path, "rb") as f:
            f.seek(offset)
            left = size - offset
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise OSError(f"{path} got shorter while it was being uploaded")
                conn.send(chunk)
                left -= len(chunk)
                if progress:
                    progress(len(chunk))
        resp = conn.getresponse()
        data = resp.read()
    except (ConnectionError, OSError, TimeoutError) as exc:
        raise ConnectError(f"transfer interrupted: {exc}") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise ApiError(resp.status, _problem_of(resp.status, data))
    return json.loads(data)


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, ConnectError):
        return True
    return isinstance(exc, ApiError) and (
        exc.status >= 500 or exc.status == 401
        or exc.code in ("offset_mismatch", "session_busy"))


def _finish(client: Client, session: dict, ack: str | None) -> dict:
    """The file's record: made now, or by a completion whose answer was lost."""
    if session.get("file_id"):
        return client.request("GET", f"/api/v1/files/{session['file_id']}")
    query = f"?ack={ack}" if ack else ""
    return client.request("POST", f"/api/v1/uploads/{session['upload_id']}/complete{query}",
                          ok=(201,))


def upload(client: Client, path: str, fields: dict, *, progress=None,
           ack: str | None = None) -> dict:
    """Store the file at ``path`` through a session, resuming as described above; returns
    the file's record. A dropped connection, an expired token, a daemon restarting or busy
    are retried (``RETRIES`` times in a row without progress); a refusal raises ApiError,
    and ConnectError once the retries are spent (the state file stays: run again to
    resume). A file that does not hash to what was declared abandons its session."""
    st = os.stat(path)
    state_path = _state_path(client, path, st)
    fields = dict(fields, size=st.st_size)
    session = _session(client, state_path, path, fields)
    shown = session["received"]
    if progress and shown:
        progress(shown)
    failures = 0
    while True:
        try:
            if session["received"] < session["size"] and not session.get("file_id"):
                session = _send_from(client, session, path, progress)
                shown = session["received"]
                continue
            attr = _finish(client, session, ack)
            break
        except (ConnectError, ApiError) as exc:
            if isinstance(exc, ApiError) and exc.code == "checksum_mismatch":
                client.request("DELETE", f"/api/v1/uploads/{session['upload_id']}",
                               ok=(204, 404))
                _forget_state(state_path)
                raise
            if not _retryable(exc):
                raise
            if isinstance(exc, ApiError) and exc.status == 401:
                client.token = None       # expired during a long transfer: sign in again
            before = session["received"]
            try:
                session = client.request("GET", f"/api/v1/uploads/{session['upload_id']}")
            except (ConnectError, ApiError) as again:
                if not _retryable(again):
                    raise
            failures = 0 if session["received"] > before else failures + 1
            if failures > RETRIES:
                raise
            time.sleep(min(8.0, 0.5 * 2 ** failures))
    _forget_state(state_path)
    return attr


def _forget_state(state_path: str) -> None:
    try:
        os.unlink(state_path)
    except FileNotFoundError:
        pass
