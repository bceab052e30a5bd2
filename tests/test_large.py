"""A 1 GiB file through a real daemon: equal bytes back, and flat daemon memory."""

import hashlib
import json
import os
import threading

from harness import Api

GIB = 1024 ** 3
BLOCK = 1 << 20


def _stream_upload(api: Api, total: int, filename: str) -> tuple[int, dict, str]:
    boundary = "big-boundary-7f3a"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    conn = api.connection(timeout=600)
    conn.putrequest("POST", "/api/v1/files")
    conn.putheader("Authorization", f"Bearer {api.token}")
    conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    conn.putheader("Content-Length", str(len(head) + total + len(tail)))
    conn.endheaders()
    conn.send(head)
    sha = hashlib.sha256()
    seed = os.urandom(BLOCK)
    sent = 0
    i = 0
    while sent < total:
        # Every block differs (a counter in front), so nothing can be deduplicated.
        block = i.to_bytes(8, "big") + seed[8:]
        block = block[: total - sent]
        sha.update(block)
        conn.send(block)
        sent += len(block)
        i += 1
    conn.send(tail)
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    return resp.status, body, sha.hexdigest()


def _stream_download(api: Api, file_id: str) -> tuple[int, str]:
    conn = api.connection(timeout=600)
    conn.request("GET", f"/api/v1/files/{file_id}/download",
                 headers={"Authorization": f"Bearer {api.token}"})
    resp = conn.getresponse()
    assert resp.status == 200
    sha = hashlib.sha256()
    n = 0
    while chunk := resp.read(BLOCK):
        sha.update(chunk)
        n += len(chunk)
    conn.close()
    return n, sha.hexdigest()


def test_one_gib_round_trip_with_flat_memory(daemon):
    api = daemon.api()
    api.upload_ok(b"warm-up", "warm.txt")
    api.download(api.upload_ok(os.urandom(BLOCK), "warm.bin")["file_id"])
    rss_start = daemon.rss_bytes()
    peak = [rss_start]
    done = threading.Event()

    def sample():
        while not done.wait(0.02):
            peak[0] = max(peak[0], daemon.rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    status, attr, sha = _stream_upload(api, GIB, "one-gib.bin")
    assert status == 201, attr
    assert attr["file_size"] == GIB and attr["checksum_sha256"] == sha
    rss_after_upload = daemon.rss_bytes()

    n, got = _stream_download(api, attr["file_id"])
    rss_after_download = daemon.rss_bytes()
    done.set()
    sampler.join()
    assert n == GIB and got == sha

    print(f"\nRSS MiB: start {rss_start / 2**20:.1f}, after upload "
          f"{rss_after_upload / 2**20:.1f}, after download {rss_after_download / 2**20:.1f}, "
          f"peak {peak[0] / 2**20:.1f}")
    limit = 64 * 1024 * 1024
    assert peak[0] - rss_start < limit
    assert rss_after_download - rss_start < limit
