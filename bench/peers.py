"""Reference servers the suite runs beside ArtStore, each configured in a scratch directory
on loopback and stopped afterwards:

- the OpenStack Swift object server (Debian ``swift-object``): one device, no ring, no
  mount check; it fsyncs every object, as ArtStore does;
- nginx (Debian ``nginx-light``) with WebDAV ``PUT``: a ceiling that does not fsync.

Objects are addressed as ``/sda1/<partition>/a/c/<name>`` (Swift) and ``/<name>`` (nginx).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from .common import wait_http

SWIFT_OBJECT_CONF = """[DEFAULT]
devices = {root}/devices
mount_check = false
bind_ip = 127.0.0.1
bind_port = {port}
workers = auto
user = {user}
log_level = WARNING
swift_dir = {root}
# 16 concurrent 1 GiB uploads share the loopback: give slow connections time.
client_timeout = 600
node_timeout = 600
conn_timeout = 10

[pipeline:main]
pipeline = object-server

[app:object-server]
use = egg:swift#object
"""

SWIFT_CONF = """[swift-hash]
swift_hash_path_suffix = artstore-bench
swift_hash_path_prefix = artstore-bench

[storage-policy:0]
name = bench
default = yes
"""

NGINX_CONF = """daemon off;
{user_line}
worker_processes auto;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    server {{
        listen 127.0.0.1:{port};
        root {root}/data;
        client_max_body_size 0;
        client_body_buffer_size 1m;
        location / {{
            dav_methods PUT DELETE;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
    }}
}}
"""


def available() -> dict[str, bool]:
    return {"swift": shutil.which("swift-object-server") is not None,
            "nginx": shutil.which("nginx") is not None}


class Peer:
    name = "peer"

    def __init__(self, proc: subprocess.Popen, port: int, root: str):
        self.proc = proc
        self.port = port
        self.root = root

    def put_path(self, prefix: str) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class SwiftObject(Peer):
    name = "swift"
    headers = {"X-Timestamp": "{ts}", "Content-Type": "application/octet-stream"}

    @classmethod
    def start(cls, root: str, port: int) -> "SwiftObject":
        os.makedirs(os.path.join(root, "devices", "sda1"), exist_ok=True)
        import pwd
        user = pwd.getpwuid(os.getuid()).pw_name
        with open(os.path.join(root, "object-server.conf"), "w") as f:
            f.write(SWIFT_OBJECT_CONF.format(root=root, port=port, user=user))
        with open(os.path.join(root, "swift.conf"), "w") as f:
            f.write(SWIFT_CONF)
        env = dict(os.environ, SWIFT_CONF_FILE=os.path.join(root, "swift.conf"))
        env.pop("PYTHONPATH", None)
        log = open(os.path.join(root, "server.log"), "ab")
        proc = subprocess.Popen(["swift-object-server", os.path.join(root, "object-server.conf")],
                                env=env, stdout=log, stderr=log, start_new_session=True)
        wait_http(port, "/", proc)
        return cls(proc, port, root)

    def put_path(self, prefix: str) -> str:
        return f"/sda1/{{p}}/a/c/{prefix}-{{n}}"

    def put_headers(self) -> dict:
        return {"X-Timestamp": f"{time.time():.5f}", "Content-Type": "application/octet-stream"}


class NginxDav(Peer):
    name = "nginx"

    @classmethod
    def start(cls, root: str, port: int) -> "NginxDav":
        for sub in ("data", "tmp"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        conf = os.path.join(root, "nginx.conf")
        with open(conf, "w") as f:
            # As root, nginx's workers would run as nobody and could not write the data.
            user_line = "user root;" if os.geteuid() == 0 else ""
            f.write(NGINX_CONF.format(root=root, port=port, user_line=user_line))
        log = open(os.path.join(root, "server.log"), "ab")
        proc = subprocess.Popen(["nginx", "-c", conf, "-p", root], stdout=log, stderr=log,
                                start_new_session=True)
        wait_http(port, "/", proc)
        return cls(proc, port, root)

    def put_path(self, prefix: str) -> str:
        return f"/{prefix}/{{n}}"

    def put_headers(self) -> dict:
        return {"Content-Type": "application/octet-stream"}
