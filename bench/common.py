"""Shared pieces of the benchmarks: servers in subprocesses, timing helpers."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse

BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median(values) -> float:
    return statistics.median(values)


def drop_caches() -> bool:
    """Empty the page cache (root only); False when not allowed."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def fresh_filesystem(work: str, size_bytes: int):
    """A directory on a new ext4 filesystem (an image file on the disk under test, attached
    with a direct-I/O loop device), so that every run meets the same, untouched filesystem:
    on a well-used one, a file creation scans inodes freed in the last 60 s (ext4's
    ``recently_deleted``) and the figures would depend on what ran before. Without root or
    the tools, a plain directory under ``work``."""
    os.makedirs(work, exist_ok=True)
    mount = os.path.join(work, "fs")
    os.makedirs(mount, exist_ok=True)
    image = os.path.join(work, "fs.img")
    tools = all(shutil.which(t) for t in ("mkfs.ext4", "losetup", "mount", "umount"))
    if os.geteuid() != 0 or not tools:
        yield mount, "plain directory"
        return
    with open(image, "wb") as f:
        f.truncate(size_bytes)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                    image], check=True)
    loop = subprocess.run(["losetup", "-f", "--show", "--direct-io=on", image], check=True,
                          capture_output=True, text=True).stdout.strip()
    try:
        subprocess.run(["mount", loop, mount], check=True)
        try:
            yield mount, f"fresh ext4 on {loop}"
        finally:
            subprocess.run(["umount", mount], check=False)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
        os.unlink(image)


def read_file_throughput(path: str, block: int = 1 << 20) -> float:
    """Bytes per second reading ``path`` with large reads into one buffer."""
    buf = bytearray(block)
    total = 0
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total / (time.perf_counter() - started)


def wait_http(port: int, path: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the server on ``port`` answers ``path`` with anything but a 5xx."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            status = conn.getresponse().status
            conn.close()
            if status < 500:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"server on {port} did not come up")


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, data_dir: str):
        self.proc = proc
        self.port = port
        self.data_dir = data_dir
        self.token: str | None = None

    @classmethod
    def artstored(cls, data_dir: str, port: int, env: dict | None = None) -> "Server":
        full_env = dict(os.environ, ARTSTORE_DATA_DIR=data_dir,
                        ARTSTORE_LISTEN=f"127.0.0.1:{port}", ARTSTORE_LOG_LEVEL="warning",
                        ARTSTORE_CONFIG="/dev/null", **(env or {}))
        proc = subprocess.Popen([os.path.join(BIN, "artstored")], env=full_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = cls(proc, port, data_dir)
        wait_http(port, "/health/ready", proc)
        with open(os.path.join(data_dir, "initial-admin.json")) as f:
            creds = json.load(f)
        form = urllib.parse.urlencode({"grant_type": "client_credentials", **creds})
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("POST", "/api/v1/auth/token", body=form,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        server.token = json.loads(conn.getresponse().read())["access_token"]
        conn.close()
        return server

    @classmethod
    def sink(cls, directory: str, port: int) -> "Server":
        proc = subprocess.Popen([sys.executable, "-m", "bench.sink", directory, str(port)],
                                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        wait_http(port, "/", proc)
        return cls(proc, port, directory)

    def list_files(self) -> list[dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port)
        conn.request("GET", "/api/v1/files?limit=1000",
                     headers={"Authorization": f"Bearer {self.token}"})
        items = json.loads(conn.getresponse().read())["items"]
        conn.close()
        return items

    def path_of(self, attr: dict) -> str:
        for dirpath, _, names in os.walk(os.path.join(self.data_dir, "disks")):
            if attr["storage_filename"] in names:
                return os.path.join(dirpath, attr["storage_filename"])
        raise FileNotFoundError(attr["storage_filename"])

    def rss(self, field: str = "VmRSS") -> int:
        """Resident bytes; ``RssAnon`` leaves out file-backed pages (LMDB's and the
        index's memory maps, which the kernel can drop at will)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
