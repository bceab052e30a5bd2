"""OpenStack Swift with its S3 front (the ``s3api`` middleware), on loopback, as the S3
benchmark's reference: Debian's ``swift-proxy``, ``swift-account``, ``swift-container`` and
``swift-object`` servers, one device each, rings of one replica built in a scratch
directory, ``tempauth`` with one S3 key (``test:tester`` / ``testing``), and the
``memcached`` that tempauth needs for its tokens.

Swift fsyncs every object (as ArtStore does) and keeps no second copy here (one replica), so
the comparison is of the two S3 fronts over one disk.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess

from .common import free_port, wait_http
from .peers import SWIFT_CONF

ACCESS_KEY, SECRET_KEY = "test:tester", "testing"
BINARIES = ("swift-proxy-server", "swift-account-server", "swift-container-server",
            "swift-object-server", "swift-ring-builder", "memcached")

_SERVER_CONF = """[DEFAULT]
devices = {root}/devices
mount_check = false
bind_ip = 127.0.0.1
bind_port = {port}
workers = {workers}
user = {user}
log_level = WARNING
swift_dir = {root}
client_timeout = 600
node_timeout = 600
conn_timeout = 10

[pipeline:main]
pipeline = {kind}-server

[app:{kind}-server]
use = egg:swift#{kind}
"""

_PROXY_CONF = """[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = {workers}
user = {user}
log_level = WARNING
swift_dir = {root}
client_timeout = 600
node_timeout = 600
conn_timeout = 10

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin

[filter:s3api]
use = egg:swift#s3api
location = us-east-1

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcached_port}

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo
"""

def available() -> bool:
    import shutil
    return all(shutil.which(b) for b in BINARIES)


class SwiftS3:
    """The running stack; ``url`` is its S3 endpoint. ``stop()`` ends every process."""

    def __init__(self, root: str, port: int, procs: list[subprocess.Popen]):
        self.root, self.port, self.procs = root, port, procs
        self.url = f"http://127.0.0.1:{port}"

    @classmethod
    def start(cls, root: str, port: int | None = None, workers: int = 2) -> "SwiftS3":
        port = port or free_port()
        os.makedirs(os.path.join(root, "devices", "sda1"), exist_ok=True)
        user = pwd.getpwuid(os.getuid()).pw_name
        with open(os.path.join(root, "swift.conf"), "w") as f:
            f.write(SWIFT_CONF)
        env = dict(os.environ, SWIFT_CONF_FILE=os.path.join(root, "swift.conf"))
        env.pop("PYTHONPATH", None)
        ports = {kind: free_port() for kind in ("account", "container", "object")}
        for kind, kind_port in ports.items():
            builder = os.path.join(root, f"{kind}.builder")
            for args in (["create", "6", "1", "1"],
                         ["add", f"r1z1-127.0.0.1:{kind_port}/sda1", "100"],
                         ["rebalance"]):
                done = subprocess.run(["swift-ring-builder", builder, *args], env=env,
                                      capture_output=True, cwd=root)
                if done.returncode not in (0, 1):   # 1: rebalance's warnings
                    raise RuntimeError(f"swift-ring-builder {args}: {done.stdout[-500:]!r}")
        procs = []
        log = open(os.path.join(root, "server.log"), "ab")
        memcached_port = free_port()
        try:
            procs.append(subprocess.Popen(
                ["memcached", "-l", "127.0.0.1", "-p", str(memcached_port), "-U", "0",
                 "-m", "64", *(["-u", user] if os.geteuid() == 0 else [])],
                stdout=log, stderr=log, start_new_session=True))
            for kind, kind_port in ports.items():
                conf = os.path.join(root, f"{kind}-server.conf")
                with open(conf, "w") as f:
                    f.write(_SERVER_CONF.format(root=root, port=kind_port, user=user,
                                                kind=kind, workers=workers))
                procs.append(subprocess.Popen([f"swift-{kind}-server", conf], env=env,
                                              stdout=log, stderr=log,
                                              start_new_session=True))
            conf = os.path.join(root, "proxy-server.conf")
            with open(conf, "w") as f:
                f.write(_PROXY_CONF.format(root=root, port=port, user=user, workers=workers,
                                           memcached_port=memcached_port))
            procs.append(subprocess.Popen(["swift-proxy-server", conf], env=env, stdout=log,
                                          stderr=log, start_new_session=True))
            for kind_port, proc in zip((*ports.values(), port), procs[1:]):
                wait_http(kind_port, "/healthcheck" if proc is procs[-1] else "/", proc)
        except BaseException:
            cls(root, port, procs).stop()
            raise
        return cls(root, port, procs)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
