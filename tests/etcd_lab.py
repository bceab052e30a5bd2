"""A real three-member etcd cluster on loopback, for the tests of the etcd authority.

Each member is Debian's ``etcd`` binary (package etcd-server) in its own process, with its
own data directory under the lab's directory and its own client and peer ports, bootstrapped
statically (``--initial-cluster``). Nothing here fakes etcd. The lab is synchronous: from
asyncio code, call the waiting methods through ``asyncio.to_thread``.

    with EtcdLab(tmp_path) as lab:
        lab.endpoints           # ["http://127.0.0.1:P0", ...]
        lab.leader()            # index of the member that is raft leader now
        lab.kill(i); lab.restart(i)
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


def _free_ports(n: int) -> list[int]:
    # Hold all the sockets open until every port is chosen, so the n ports differ.
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class EtcdLab:
    """``size`` etcd members on 127.0.0.1. ``start()`` returns once the cluster has a raft
    leader; ``close()`` SIGKILLs every member it started (by pid) and waits for it."""

    def __init__(self, directory, size: int = 3):
        self.dir = os.fspath(directory)
        self.size = size
        ports = _free_ports(2 * size)
        self.client_ports, self.peer_ports = ports[:size], ports[size:]
        self.names = [f"m{i}" for i in range(size)]
        self.endpoints = [f"http://127.0.0.1:{p}" for p in self.client_ports]
        self.token = "artstore-lab-" + secrets.token_hex(4)  # never joins another lab
        self.procs: list[subprocess.Popen | None] = [None] * size

    # --- processes ---------------------------------------------------------------------

    def _spawn(self, i: int) -> None:
        cluster = ",".join(f"{n}=http://127.0.0.1:{p}"
                           for n, p in zip(self.names, self.peer_ports))
        args = [ETCD, "--name", self.names[i],
                "--data-dir", os.path.join(self.dir, self.names[i]),
                "--listen-client-urls", self.endpoints[i],
                "--advertise-client-urls", self.endpoints[i],
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", self.token,
                # etcd's defaults (100 ms heartbeat, 1 s election timeout): shorter ones
                # cause spurious elections on a loaded 2-core CI machine.
                "--heartbeat-interval", "100", "--election-timeout", "1000",
                "--logger", "zap", "--log-outputs", "stderr"]
        log = open(os.path.join(self.dir, f"{self.names[i]}.log"), "ab")
        try:
            self.procs[i] = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=log, start_new_session=True)
        finally:
            log.close()

    def start(self, timeout: float = 20.0) -> "EtcdLab":
        os.makedirs(self.dir, exist_ok=True)
        atexit.register(self.close)  # members run in their own session: not hit by ^C
        try:
            for i in range(self.size):
                self._spawn(i)
            self.wait_for_leader(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` (no clean shutdown: as a power cut would) and reap it."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        self.procs[i] = None

    def restart(self, i: int) -> None:
        """Start member ``i`` again on its old data directory and ports (the bootstrap
        flags are ignored then: etcd rejoins from its write-ahead log)."""
        self.kill(i)
        self._spawn(i)

    def close(self) -> None:
        for i in range(self.size):
            self.kill(i)

    def __enter__(self) -> "EtcdLab":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def log(self, i: int) -> str:
        with open(os.path.join(self.dir, f"{self.names[i]}.log"), errors="replace") as f:
            return f.read()

    # --- status, through etcdctl (an independent client) ---------------------------------

    def status(self) -> dict[int, dict]:
        """``etcdctl endpoint status`` of every running member: index -> its status
        (``leader``, ``raft_term``, ``member_id``). Members that do not answer are absent."""
        running = [i for i, p in enumerate(self.procs) if p is not None and p.poll() is None]
        if not running:
            return {}
        out = subprocess.run(
            [ETCDCTL, "--endpoints", ",".join(self.endpoints[i] for i in running),
             "--dial-timeout", "1s", "--command-timeout", "2s",
             "endpoint", "status", "-w", "json"],
            capture_output=True, text=True, timeout=10, env={**os.environ, "ETCDCTL_API": "3"})
        result = {}
        # etcdctl exits non-zero if one endpoint failed, but still prints the others.
        for entry in json.loads(out.stdout or "[]"):
            i = self.endpoints.index(entry["Endpoint"])
            st = entry["Status"]
            # Protobuf's JSON leaves zero fields out: no "leader" while there is none.
            result[i] = {"leader": st.get("leader", 0),
                         "member_id": st["header"]["member_id"],
                         "raft_term": st.get("raftTerm", 0)}
        return result

    def leader(self, st: dict[int, dict] | None = None) -> int | None:
        """Index of the member that is raft leader, if the answering members (or those in
        ``st``, a ``status()``) agree on one that is itself among them."""
        st = self.status() if st is None else st
        ids = {s["member_id"]: i for i, s in st.items()}
        leaders = {s["leader"] for s in st.values()}
        if len(leaders) == 1 and (lid := leaders.pop()) in ids:
            return ids[lid]
        return None

    def wait_for_leader(self, timeout: float = 15.0, exclude: int | None = None) -> int:
        """Wait until every running member answers and all agree on one leader (other than
        ``exclude``); return its index."""
        deadline = time.monotonic() + timeout
        while True:
            running = {i for i, p in enumerate(self.procs) if p is not None}
            try:
                st = self.status()
                lead = self.leader(st) if set(st) == running else None
            except (subprocess.TimeoutExpired, ValueError):
                lead = None
            if lead is not None and lead != exclude:
                return lead
            if time.monotonic() >= deadline:
                raise AssertionError(f"etcd lab: no leader after {timeout} s; logs in "
                                     f"{self.dir}")
            time.sleep(0.1)

    def etcdctl(self, *args: str) -> str:
        """Run ``etcdctl`` (v3 API) against the running members; its stdout."""
        running = [e for e, p in zip(self.endpoints, self.procs) if p is not None]
        out = subprocess.run([ETCDCTL, "--endpoints", ",".join(running), *args],
                             capture_output=True, text=True, timeout=15, check=True,
                             env={**os.environ, "ETCDCTL_API": "3"})
        return out.stdout
