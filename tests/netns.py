"""A network-namespace lab for multi-daemon tests: real nodes on a real (virtual) LAN.

``NetLab(n)`` builds a hub namespace holding a Linux bridge, and n node namespaces each
with ``lo`` and ``eth0`` (a veth whose peer is a port of that bridge) at ``lab.addr(i)``.
Processes run inside a node with ``lab.spawn``; the test itself talks to them through
sockets made inside the node's namespace (``lab.connect``, ``NsApi``). Failures are real
ones: a link taken down (``isolate``) or nft drop rules (``partition``, ``block``).

Needs root, ``ip`` (iproute2) and ``nft`` (nftables). Every address lives only inside
namespaces the lab made; the root namespace is never given an interface or address.
Everything the lab made is removed by ``close()``, also after a failure half-way through
creation; namespaces left by a crashed run (whose pid is dead) are removed by the next lab.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import http.client
import itertools
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.parse

from harness import ARTSTORE, ARTSTORED, DAEMON_LOGS, ISSUED_SECRETS, Api, Daemon

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_labs = itertools.count()
# Names made by the default prefix: nl<pid>x<seq>-<i> and nl<pid>x<seq>-hub.
_DEFAULT_NAME = re.compile(r"^nl(\d+)x\d+-(?:hub|\d+)$")

# One table per node namespace. The sets are what partition/block change: swapping set
# elements is atomic and needs no rule handles. There is no conntrack "accept established"
# rule on purpose: a partition must also cut connections that are already open.
_NFT_TABLE = """
table inet netlab {
  set parted { type ipv4_addr; }
  set blocked { type ipv4_addr; }
  chain input { type filter hook input priority 0; policy accept; ip saddr @parted drop; }
  chain output { type filter hook output priority 0; policy accept;
                 ip daddr @parted drop; ip daddr @blocked drop; }
}
"""


def run(*argv: str, input: str | None = None) -> str:
    """Run a command; return its stdout, or raise RuntimeError carrying its stderr."""
    p = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


def _list_netns() -> list[str]:
    # Lines look like "name" or "name (id: 3)".
    return [line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()]


def _delete_netns(name: str) -> None:
    # Kill what is still inside first: the namespace lives on, unnamed, while a process does.
    for pid in run("ip", "netns", "pids", name).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    run("ip", "netns", "delete", name)


def remove_stale_namespaces() -> list[str]:
    """Delete the namespaces of earlier labs whose process is dead; return their names."""
    stale = [name for name in _list_netns() if (m := _DEFAULT_NAME.match(name))
             and not os.path.exists(f"/proc/{m.group(1)}")]
    for name in stale:
        try:
            _delete_netns(name)
        except RuntimeError:
            if name in _list_netns():  # else another lab removed it first
                raise
    return stale


class NetLab:
    """n node namespaces on one bridge. Use as a context manager (in a fixture:
    ``with NetLab(3) as lab: yield lab``), or call ``close()``.

    Node i is namespace ``ns(i)`` with address ``addr(i)`` on a /24 private to this lab.
    All methods raise RuntimeError (with the failing command's stderr) if a command fails.
    """

    def __init__(self, n: int, prefix: str | None = None):
        seq = next(_labs)
        self.n = n
        self.prefix = prefix or f"nl{os.getpid()}x{seq}"
        # The bridge is private to the lab, so subnets could even repeat; distinct ones
        # only keep captures and logs of concurrent labs unambiguous.
        self.subnet = f"10.{200 + os.getpid() % 50}.{seq % 256}"
        self.hub = f"{self.prefix}-hub"
        self.procs: list[subprocess.Popen] = []
        self._made: list[str] = []  # what exists so far, for close()
        self._tables: set[str] = set()
        try:
            remove_stale_namespaces()
            self._create()
        except BaseException:
            self.close()
            raise

    def _create(self) -> None:
        self._add_netns(self.hub)
        run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.hub, "link", "set", "br0", "up")
        for i in range(self.n):
            ns = self.ns(i)
            self._add_netns(ns)
            run("ip", "-n", self.hub, "link", "add", f"v{i}", "type", "veth",
                "peer", "name", "eth0", "netns", ns)
            run("ip", "-n", self.hub, "link", "set", f"v{i}", "master", "br0", "up")
            run("ip", "-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "netns", "exec", ns, "nft", "-f", "-", input=_NFT_TABLE)
            self._tables.add(ns)

    def _add_netns(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self._made.append(name)

    def __enter__(self) -> "NetLab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ns(self, i: int) -> str:
        """The name of node i's namespace (as ``ip netns`` knows it)."""
        self._check(i)
        return f"{self.prefix}-{i}"

    def addr(self, i: int) -> str:
        """Node i's IPv4 address (a string, no prefix length)."""
        self._check(i)
        return f"{self.subnet}.{i + 1}"

    def _check(self, i: int) -> None:
        if not 0 <= i < self.n:
            raise IndexError(f"node {i} not in a lab of {self.n}")

    def spawn(self, i: int, argv: list[str], env: dict | None = None, stdout=None,
              stderr=None) -> subprocess.Popen:
        """Start argv inside node i's network namespace. The Popen's pid is argv's own
        process (``nsenter`` execs it), leading a new session; ``close()`` kills its whole
        group. Only the network is separate: unlike ``ip netns exec``, no private mount
        namespace is made, so a filesystem the test unmounts is not kept busy in one."""
        proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.ns(i)}", "--", *argv],
                                env=env, stdout=stdout, stderr=stderr,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        """SIGKILL a spawned process and its process group, and reap it."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the leader and its whole group are gone already
        proc.wait()

    def isolate(self, i: int) -> None:
        """Cut node i off the bridge (its link loses carrier); it keeps its own address."""
        run("ip", "-n", self.hub, "link", "set", f"v{i}", "down")

    def reconnect(self, i: int) -> None:
        """Undo ``isolate(i)``."""
        run("ip", "-n", self.hub, "link", "set", f"v{i}", "up")

    def _nft(self, i: int, command: str) -> None:
        run("ip", "netns", "exec", self.ns(i), "nft", command)

    def partition(self, groups: list[list[int]]) -> None:
        """Drop all IPv4 traffic, both ways, between nodes of different groups (open
        connections too). Replaces any earlier partition. Nodes in no group still reach
        every node."""
        members = [i for g in groups for i in g]
        if len(members) != len(set(members)):
            raise ValueError(f"a node is in two groups: {groups}")
        self.heal()
        for g in groups:
            others = [self.addr(j) for h in groups if h is not g for j in h]
            for i in g:
                if others:
                    self._nft(i, f"add element inet netlab parted {{ {', '.join(others)} }}")

    def heal(self) -> None:
        """Remove the partition (``block`` rules stay)."""
        for i in range(self.n):
            self._nft(i, "flush set inet netlab parted")

    def block(self, i: int, j: int) -> None:
        """Drop every packet node i sends to node j. TCP between them then stalls whoever
        dials (one of the handshake's directions is lost); j's datagrams still reach i."""
        self._nft(i, f"add element inet netlab blocked {{ {self.addr(j)} }}")

    def unblock(self, i: int, j: int) -> None:
        """Undo ``block(i, j)``."""
        self._nft(i, f"delete element inet netlab blocked {{ {self.addr(j)} }}")

    def connect(self, i: int, host: str, port: int, timeout: float | None = 10) -> socket.socket:
        """A TCP socket connected to (host, port) from inside node i's namespace.

        A socket belongs to the namespace it was created in, for life; setns changes only
        the calling thread's namespace, so a throwaway thread makes it and the rest of the
        process stays in the root namespace. Connection errors propagate as raised."""
        path = f"/var/run/netns/{self.ns(i)}"
        result: list = []

        def inside():
            try:
                fd = os.open(path, os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns({path}): {os.strerror(err)}")
                finally:
                    os.close(fd)
                # A lab address dialled from the root namespace would leave the machine.
                if os.stat("/proc/thread-self/ns/net").st_ino != os.stat(path).st_ino:
                    raise RuntimeError(f"thread not in {path} after setns")
                result.append(socket.create_connection((host, port), timeout))
            except BaseException as e:
                result.append(e)

        t = threading.Thread(target=inside, name=f"netns-{i}")
        t.start()
        t.join()
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def http_connection(self, i: int, host: str, port: int,
                        timeout: float = 10) -> http.client.HTTPConnection:
        """An HTTPConnection to host:port whose socket is made inside node i."""
        lab = self

        class NsHTTPConnection(http.client.HTTPConnection):
            def connect(self):
                self.sock = lab.connect(i, self.host, self.port, self.timeout)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        return NsHTTPConnection(host, port, timeout=timeout)

    def close(self) -> None:
        """Kill every spawned process, then delete the nft tables and every namespace the
        lab made. Safe to call twice. Tries every step; raises the first error at the end."""
        errors: list[BaseException] = []
        for proc in self.procs:
            try:
                self.kill(proc)
            except Exception as e:
                errors.append(e)
        self.procs.clear()
        for name in reversed(self._made):
            try:
                if name in self._tables:  # it would go with the namespace; this says so
                    run("ip", "netns", "exec", name, "nft", "delete", "table", "inet", "netlab")
                _delete_netns(name)
            except Exception as e:
                errors.append(e)
        self._made.clear()
        self._tables.clear()
        if errors:
            raise errors[0]


class NsApi(Api):
    """``Api`` whose connections are made inside namespace ``node`` of ``lab`` to
    ``host`` (default: the node's own address) — e.g. to a daemon in that namespace,
    or, with another node's address, across the lab's network."""

    def __init__(self, lab: NetLab, node: int, port: int, token: str | None = None, *,
                 host: str | None = None):
        super().__init__(port, token)
        self.lab, self.node = lab, node
        self.host = host or lab.addr(node)

    def with_token(self, token: str | None) -> "NsApi":
        return NsApi(self.lab, self.node, self.port, token, host=self.host)

    def connection(self, timeout: float = 120) -> http.client.HTTPConnection:
        return self.lab.http_connection(self.node, self.host, self.port, timeout)


class NsDaemon(Daemon):
    """``Daemon`` running inside node ``node`` of ``lab``, listening on
    ``lab.addr(node):port``. Its data dir, config file and log are on the ordinary
    filesystem, as for ``Daemon``; ``api()``, ``wait_ready``, ``token_for``, ``stop`` and
    ``kill`` work as there, through the namespace."""

    def __init__(self, lab: NetLab, node: int, data_dir: str, **kw):
        super().__init__(data_dir, **kw)
        self.lab, self.node = lab, node
        self.host = lab.addr(node)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ns_api(self, token: str | None = None) -> NsApi:
        """An unauthenticated (or ``token``) client reaching this daemon from its node."""
        return NsApi(self.lab, self.node, self.port, token)

    def start(self, wait: bool = True) -> "NsDaemon":
        env = {**os.environ, "ARTSTORE_DATA_DIR": self.data_dir,
               "ARTSTORE_LISTEN": f"{self.host}:{self.port}", **self.extra_env}
        DAEMON_LOGS.add(self.log_path)
        self._token = None
        with open(self.log_path, "ab") as log:
            self.proc = self.lab.spawn(self.node, [ARTSTORED, "--config", self._write_config()],
                                       env=env, stdout=log, stderr=log)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        # Daemon.wait_ready builds Api(self.port) on 127.0.0.1; the same loop through the lab.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"artstored exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            try:
                if self.ns_api().get("/health/ready").status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError("artstored did not become ready:\n" + self.log_tail())

    def token_for(self, client_id: str, secret: str, scope: str | None = None) -> str:
        form = {"grant_type": "client_credentials", "client_id": client_id,
                "client_secret": secret, **({"scope": scope} if scope else {})}
        r = self.ns_api().request("POST", "/api/v1/auth/token",
                                  body=urllib.parse.urlencode(form).encode(),
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status == 200, r.body
        ISSUED_SECRETS.update((secret, r.json()["access_token"]))
        return r.json()["access_token"]

    def api(self, token: str | None = "admin") -> NsApi:
        return self.ns_api(self.admin_token() if token == "admin" else token)

    def kill(self) -> None:
        if self.proc:
            self.lab.kill(self.proc)

    def cli(self, *args: str, check: bool = False, input: bytes | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        """``artstore`` run inside the daemon's node (so ``url`` is reachable)."""
        full_env = {k: v for k, v in os.environ.items() if k != "ARTSTORE_CLIENT_ID"}
        full_env.update({"ARTSTORE_URL": self.url, **(env or {})})
        return subprocess.run(["nsenter", f"--net=/run/netns/{self.lab.ns(self.node)}", "--",
                               ARTSTORE, *args],
                              env=full_env, capture_output=True, input=input, check=check,
                              timeout=600)
