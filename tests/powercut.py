"""Power cuts, the way filesystem developers simulate them (xfstests' ``godown``).

Each disk root and the LMDB environment live on their own small ext4 or XFS image attached
with ``losetup --direct-io=on`` (without direct I/O the loop device's writes would sit in
this machine's page cache and survive the "cut"). A cut shuts every filesystem down with
``EXT4_IOC_SHUTDOWN`` / ``XFS_IOC_GOINGDOWN`` and the NOLOGFLUSH flag: from then on every
I/O fails, and whatever was not flushed to the device is gone, as in a power cut. Then the
daemon is SIGKILLed, each filesystem unmounted, checked and mounted again (ext4: e2fsck -fy
then mount; XFS: mount to replay the log, unmount, ``xfs_repair -n``, mount — never
``xfs_repair -L``, which would throw fsync'd data away), and the daemon restarted.

``PowerCutRig`` owns the filesystems and the daemon; ``Workload`` is the mixed load
(uploads small and streamed, PATCHes, DELETEs, rebuild jobs, mode changes) that records
what the daemon acknowledged; ``check_cycle`` and ``check_case`` assert the promise. Used
by tests/test_powercut.py and by the soak in bench/powercut.py. Needs root.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import itertools
import json
import os
import random
import shutil
import struct
import subprocess
import threading
import time
import urllib.parse

from artstored.engine.ingest import DIRECT_BYTES
from harness import Api, Daemon, free_port, multipart

GOINGDOWN = 0x8004587D          # EXT4_IOC_SHUTDOWN == XFS_IOC_GOINGDOWN
NOLOGFLUSH = 2                  # drop everything not yet on the device
IMAGE_BYTES = {"ext4": 1 << 30, "xfs": 1 << 30}   # sparse; XFS needs at least 300 MiB
WORD = "powercut"               # every description carries it, so one query finds all


def _run(*cmd: str, ok=(0,)) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if result.returncode not in ok:
        raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}:\n"
                           f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result


class LoopFs:
    """One filesystem on an image file behind a direct-I/O loop device."""

    def __init__(self, workdir: str, name: str, fstype: str):
        assert fstype in IMAGE_BYTES
        self.fstype = fstype
        self.image = os.path.join(workdir, f"{name}.img")
        self.mountpoint = os.path.join(workdir, name)
        self.device: str | None = None
        self.checks = 0

    def create(self) -> "LoopFs":
        with open(self.image, "wb") as f:
            f.truncate(IMAGE_BYTES[self.fstype])
        if self.fstype == "ext4":
            _run("mkfs.ext4", "-q", "-F", "-b", "4096", self.image)
        else:
            _run("mkfs.xfs", "-q", "-f", self.image)
        self.device = _run("losetup", "--direct-io=on", "--find", "--show",
                           self.image).stdout.strip()
        os.makedirs(self.mountpoint, exist_ok=True)
        self.mount()
        return self

    def mount(self) -> None:
        _run("mount", self.device, self.mountpoint)

    def cut(self) -> None:
        """The power cut: the filesystem stops, unflushed writes are lost."""
        fd = os.open(self.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.ioctl(fd, GOINGDOWN, struct.pack("I", NOLOGFLUSH))
        finally:
            os.close(fd)

    def umount(self) -> None:
        for _ in range(50):
            if _run("umount", self.mountpoint, ok=(0, 32)).returncode == 0:
                return
            time.sleep(0.1)  # a process that held a file there is still exiting
        _run("umount", self.mountpoint)

    def check_and_mount(self) -> None:
        """After a cut: replay the journal, check the filesystem, mount it again. Raises if
        the check finds damage it had to repair beyond the journal replay."""
        if self.fstype == "ext4":
            # 0: clean; 1: errors corrected (the journal replay reports itself this way).
            result = _run("e2fsck", "-fy", self.device, ok=(0, 1))
            if "FILE SYSTEM WAS MODIFIED" in result.stdout and "Pass " in result.stdout \
                    and _ext4_repaired_more_than_journal(result.stdout):
                raise RuntimeError(f"e2fsck repaired damage:\n{result.stdout[-3000:]}")
            self.mount()
        else:
            self.mount()       # replays the log
            self.umount()
            _run("xfs_repair", "-n", self.device)
            self.mount()
        self.checks += 1

    def destroy(self) -> None:
        if os.path.ismount(self.mountpoint):
            _run("umount", "-l", self.mountpoint, ok=(0, 32))
        if self.device:
            _run("losetup", "-d", self.device, ok=(0, 1))
            self.device = None
        if os.path.exists(self.image):
            os.unlink(self.image)


# Summary counters ext4 updates lazily: wrong after any crash, and not damage.
_LAZY_COUNTERS = ("Free blocks count wrong", "Free inodes count wrong")


def _ext4_repaired_more_than_journal(output: str) -> bool:
    # e2fsck prints each problem it fixed, then "Fix? yes" / "Clear? yes" on the next line.
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.rstrip().endswith("? yes"):
            problem = lines[i - 1] if i else ""
            if not problem.startswith(_LAZY_COUNTERS):
                return True
    return False


class PowerCutRig:
    """A daemon whose LMDB (data directory) and two disk roots are each on a loop image."""

    def __init__(self, workdir: str, fstype: str, sync_method: str, mode: str):
        self.workdir = workdir
        self.fstype = fstype
        self.filesystems = [LoopFs(workdir, name, fstype) for name in ("lmdb", "disk1", "disk2")]
        for fs in self.filesystems:
            fs.create()
        lmdb_fs, *disk_fs = self.filesystems
        self.disk_roots = [os.path.join(fs.mountpoint, "artstore") for fs in disk_fs]
        self.daemon = Daemon(os.path.join(lmdb_fs.mountpoint, "data"), port=free_port(),
                             config={"storage": {"disks": self.disk_roots,
                                                 "sync_method": sync_method},
                                     "element": {"initial_mode": mode},
                                     "retention": {"gc_interval_seconds": 0}})
        # The log and the config must outlive the cut: keep them off the cut filesystems.
        self.daemon.log_path = os.path.join(workdir, "artstored.log")
        self.daemon._write_config = self._write_config
        self.cuts = 0

    def _write_config(self) -> str:
        path = os.path.join(self.workdir, "artstored.toml")
        with open(path, "w") as f:
            for section, table in self.daemon.config.items():
                f.write(f"[{section}]\n")
                for key, value in table.items():
                    f.write(f"{key} = {json.dumps(value)}\n")
        return path

    def start(self, wait: bool = True) -> Daemon:
        return self.daemon.start(wait=wait)

    def cut(self) -> None:
        """Power cut on every filesystem, then the process dies."""
        for fs in self.filesystems:
            fs.cut()
        self.daemon.kill()
        self.cuts += 1

    def restore(self) -> None:
        """What the operator's reboot does: unmount, check, mount."""
        for fs in self.filesystems:
            fs.umount()
            fs.check_and_mount()

    def error_lines(self, most: int = 60) -> str:
        """The daemon log's error lines and tracebacks (for a failure's message)."""
        try:
            with open(self.daemon.log_path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return "(no log)"
        keep = [line[:3000] for line in lines if '"level": "error"' in line]
        return "\n".join(keep[-most:])

    def close(self) -> None:
        self.daemon.kill()
        for fs in self.filesystems:
            fs.destroy()


class Workload:
    """Clients hammering the daemon, recording exactly what it acknowledged.

    Answers received before ``cut_started`` must be expected ones (201, 200, 204, 404 for a
    file deleted meanwhile, 409 for a mode that refuses); anything else is recorded in
    ``errors`` and fails the test. After the cut the daemon may answer anything: nobody
    was promised anything for a request it could not finish.
    """

    UPLOADERS = 4

    def __init__(self, api: Api, rng: random.Random, ledger: "Ledger", mode: str):
        self.api = api
        self.rng = rng
        self.ledger = ledger
        self.mode = mode
        self.stop = threading.Event()
        self.cut_started = threading.Event()
        self.errors: list[str] = []
        loops = [self.upload_loop] * self.UPLOADERS + [self.patch_loop, self.rebuild_loop]
        loops.append(self.delete_loop if mode == "edit" else self.mode_loop)
        self.threads = [threading.Thread(target=self._guard, args=(fn, i), daemon=True)
                        for i, fn in enumerate(loops)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)
            if t.is_alive():
                self.errors.append(f"{t.name} did not stop")

    def _guard(self, fn, n: int) -> None:
        try:
            fn(random.Random(self.rng.random()), n)
        except BaseException as exc:  # an assertion in a thread must fail the test
            self.errors.append(f"{fn.__name__}: {exc!r}")

    def _request(self, method: str, path: str, body=None, headers=None):
        """(status, parsed body or None), or None when the daemon is gone."""
        headers = dict(headers or {})
        headers["Authorization"] = f"Bearer {self.api.token}"
        conn = http.client.HTTPConnection("127.0.0.1", self.api.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        return resp.status, doc

    def _unexpected(self, what: str, answer) -> None:
        if not self.cut_started.is_set():
            self.errors.append(f"{what}: unexpected answer {answer[0]} {str(answer[1])[:300]}")

    def upload_loop(self, rng: random.Random, n: int) -> None:
        for i in itertools.count():
            if self.stop.is_set():
                break
            size = rng.choice([0, 1, 100, 4096, 70_000, 250_000, 300_000, 1_500_000,
                               rng.randint(1, 6_000_000)])
            if n == 0 and i % 4 == 0:   # one the daemon writes with O_DIRECT (>= 32 MiB)
                size = DIRECT_BYTES + rng.randint(1, 1 << 20)
            data = rng.randbytes(size)
            sha = hashlib.sha256(data).hexdigest()
            body, ctype = multipart({"sha256": sha, "description": f"{WORD} w{n}"},
                                    content=data, filename=f"cut-{n}-{size}.bin")
            answer = self._request("POST", "/api/v1/files", body, {"Content-Type": ctype})
            if answer is None:
                return
            if answer[0] == 201:
                attr = answer[1]
                assert attr["checksum_sha256"] == sha and attr["file_size"] == size, attr
                self.ledger.uploaded(attr, sha, size)
            elif not (answer[0] == 409 and answer[1].get("code") == "mode_not_allowed"):
                self._unexpected("upload", answer)

    def patch_loop(self, rng: random.Random, n: int) -> None:
        while not self.stop.is_set():
            fid = self.ledger.pick(rng)
            if fid is None:
                time.sleep(0.01)
                continue
            text = f"{WORD} patched {rng.random()}"
            answer = self._request("PATCH", f"/api/v1/files/{fid}",
                                   json.dumps({"description": text}).encode(),
                                   {"Content-Type": "application/merge-patch+json"})
            if answer is None:
                return
            if answer[0] == 200:
                self.ledger.patched(fid, answer[1]["version"], text)
            elif answer[0] == 404 and self.ledger.was_deleted(fid):
                continue
            elif not (answer[0] == 409 and answer[1].get("code") == "mode_not_allowed"):
                self._unexpected("patch", answer)

    def delete_loop(self, rng: random.Random, n: int) -> None:
        while not self.stop.is_set():
            time.sleep(rng.uniform(0, 0.03))
            fid = self.ledger.pick(rng)
            if fid is None:
                continue
            self.ledger.deleting(fid)
            answer = self._request("DELETE", f"/api/v1/files/{fid}")
            if answer is None:
                return
            if answer[0] in (200, 204):
                self.ledger.deleted(fid)
            else:
                self._unexpected("delete", answer)

    def rebuild_loop(self, rng: random.Random, n: int) -> None:
        while not self.stop.wait(rng.uniform(0.1, 0.6)):
            answer = self._request("POST", "/api/v1/element/rebuild")
            if answer is None:
                return
            if answer[0] == 202:
                self.ledger.rebuilds += 1
            elif not (answer[0] == 409 and answer[1].get("code") == "job_running"):
                self._unexpected("rebuild", answer)

    def mode_loop(self, rng: random.Random, n: int) -> None:
        while not self.stop.wait(rng.uniform(0.1, 0.5)):
            target = "ro" if self.ledger.mode == "rw" else "rw"
            self.ledger.mode_in_flight = target
            answer = self._request("PUT", "/api/v1/element/mode",
                                   json.dumps({"mode": target, "confirm": True}).encode(),
                                   {"Content-Type": "application/json"})
            if answer is None:
                return
            if answer[0] == 200:
                self.ledger.mode = target
                self.ledger.mode_changes += 1
                self.ledger.mode_in_flight = None
            else:
                self._unexpected("mode", answer)


class Ledger:
    """What the daemon acknowledged, across cycles."""

    def __init__(self, mode: str):
        self.lock = threading.Lock()
        self.acked: dict[str, tuple[str, int]] = {}     # file_id -> (sha256, size)
        self.names: dict[str, str] = {}                  # file_id -> storage_filename
        self.patches: dict[str, tuple[int, str]] = {}    # file_id -> (version, description)
        self.patch_count = 0
        self.gone: set[str] = set()                      # acknowledged DELETEs
        self.maybe_gone: set[str] = set()                # DELETEs sent, not acknowledged
        self.rebuilds = 0
        self.mode = "rw" if mode == "rw" else mode
        self.mode_in_flight: str | None = None
        self.mode_changes = 0

    def uploaded(self, attr: dict, sha: str, size: int) -> None:
        with self.lock:
            self.acked[attr["file_id"]] = (sha, size)
            self.names[attr["file_id"]] = attr["storage_filename"]

    def pick(self, rng: random.Random) -> str | None:
        with self.lock:
            live = [f for f in self.acked if f not in self.gone and f not in self.maybe_gone]
            return rng.choice(live) if live else None

    def patched(self, fid: str, version: int, text: str) -> None:
        with self.lock:
            self.patch_count += 1
            if version > self.patches.get(fid, (0, ""))[0]:
                self.patches[fid] = (version, text)

    def deleting(self, fid: str) -> None:
        with self.lock:
            self.maybe_gone.add(fid)

    def deleted(self, fid: str) -> None:
        with self.lock:
            self.gone.add(fid)
            self.maybe_gone.discard(fid)

    def was_deleted(self, fid: str) -> bool:
        with self.lock:
            return fid in self.gone or fid in self.maybe_gone

    def settle(self, catalog_ids: set[str]) -> None:
        """After a restart: a DELETE that was in flight either happened or did not."""
        with self.lock:
            for fid in list(self.maybe_gone):
                if fid not in catalog_ids:
                    self.gone.add(fid)
                self.maybe_gone.discard(fid)


# --- checks ----------------------------------------------------------------------------------


def list_all(api: Api) -> dict[str, dict]:
    items, cursor = {}, None
    while True:
        page = api.get("/api/v1/files?limit=1000" + (f"&cursor={cursor}" if cursor else ""))
        assert page.status == 200, page.body[:300]
        doc = page.json()
        items.update({a["file_id"]: a for a in doc["items"]})
        cursor = doc["next_cursor"]
        if not cursor:
            return items


def _disk_files(rig: PowerCutRig) -> tuple[list[str], list[str]]:
    """(every file under the roots' objects/, every file in their tmp/)."""
    objects, tmp = [], []
    for root in rig.disk_roots:
        for dirpath, _, names in os.walk(os.path.join(root, "objects")):
            objects += [os.path.join(dirpath, n) for n in names]
        tmp += os.listdir(os.path.join(root, "tmp"))
    return objects, tmp


def check_cycle(rig: PowerCutRig, ledger: Ledger, verified: set[str]) -> dict[str, dict]:
    """After a restart: the promise, checked against what was acknowledged."""
    from harness import store_snapshot

    api = rig.daemon.api()
    snapshot = store_snapshot(rig.daemon.data_dir)
    assert snapshot["pending"] == [], f"intents left after recovery: {snapshot['pending']}"
    listed = list_all(api)
    assert set(snapshot["catalog"]) == set(listed)
    ledger.settle(set(listed))
    lost = [f for f in ledger.acked if f not in listed and f not in ledger.gone]
    assert not lost, f"{len(lost)} acknowledged uploads lost: {lost[:3]}"
    resurrected = [f for f in ledger.gone if f in listed]
    assert not resurrected, f"{len(resurrected)} acknowledged deletes undone: {resurrected[:3]}"
    for fid, (sha, size) in ledger.acked.items():
        if fid in listed:
            assert (listed[fid]["checksum_sha256"], listed[fid]["file_size"]) == (sha, size)
    objects, tmp = _disk_files(rig)
    assert tmp == [], f"left in tmp/: {tmp[:5]}"
    by_name = {os.path.basename(p): p for p in objects}
    assert len(by_name) == len(objects)
    for fid, attr in listed.items():
        data = by_name.pop(attr["storage_filename"], None)
        sidecar = by_name.pop(attr["storage_filename"] + ".attr.json", None)
        assert data and sidecar, f"{fid}: data or sidecar missing in objects/"
        with open(sidecar, "rb") as f:
            on_disk = json.load(f)
        assert on_disk["version"] == attr["version"], \
            f"{fid}: catalog at version {attr['version']}, attr.json at {on_disk['version']}"
        assert on_disk["description"] == attr["description"]
    assert not by_name, f"files in objects/ that no record owns: {sorted(by_name)[:5]}"
    for fid, (version, text) in ledger.patches.items():
        if fid in listed:
            assert listed[fid]["version"] >= version, \
                f"{fid}: acknowledged version {version}, found {listed[fid]['version']}"
            if listed[fid]["version"] == version:
                assert listed[fid]["description"] == text
    for fid in [f for f in listed if f not in verified]:
        r = api.download(fid)
        if r.status == 409:  # a cycle may end in mode ro: content still readable; ar never
            raise AssertionError(f"download refused: {r.body[:200]}")
        assert r.status == 200, (fid, r.status, r.body[:200])
        assert hashlib.sha256(r.body).hexdigest() == listed[fid]["checksum_sha256"]
        verified.add(fid)
    mode = api.get("/api/v1/element").json()["mode"]
    allowed = {ledger.mode} | ({ledger.mode_in_flight} if ledger.mode_in_flight else set())
    assert mode in allowed, f"mode {mode}, acknowledged {ledger.mode}"
    ledger.mode, ledger.mode_in_flight = mode, None
    _assert_chain(rig.daemon.data_dir)
    return listed


def _assert_chain(data_dir: str) -> None:
    from artstored.engine import lmdb_schema as S
    from artstored.engine import wal as W

    env = S.Env(os.path.join(data_dir, "store.lmdb"), readonly=True)
    try:
        with env.read() as txn:
            broken = W.verify_chain(txn, env)
    finally:
        env.close()
    assert broken is None, f"the audit chain breaks at record {broken}"


def wait_index_caught_up(api: Api, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        lag = api.get("/api/v1/element").json()["index_lag"]
        if lag["records_behind"] == 0 and not lag["rebuilding"]:
            return
        assert time.monotonic() < deadline, f"index did not catch up: {lag}"
        time.sleep(0.1)


def search_ids(api: Api) -> set[str]:
    found, cursor = set(), None
    while True:
        query = {"q": WORD, "limit": 100, "sort": "created_at"}
        if cursor:
            query["cursor"] = cursor
        r = api.get("/api/v1/search?" + urllib.parse.urlencode(query))
        assert r.status == 200, r.body[:300]
        doc = r.json()
        found.update(hit["file_id"] for hit in doc["items"])
        cursor = doc.get("next_cursor")
        if not cursor:
            return found


def check_case(rig: PowerCutRig, ledger: Ledger, mount_view) -> None:
    """At the end of a case: search and the FUSE view agree with the catalog; an offline
    rebuild from the sidecars brings back no acknowledged DELETE; the chain verifies."""
    api = rig.daemon.api()
    listed = list_all(api)
    wait_index_caught_up(api)
    assert search_ids(api) == set(listed), "search and the catalog disagree"
    with mount_view(rig.daemon.data_dir, rig.disk_roots) as path:
        # by-id/<file_id><extension of the original name>
        in_view = {name[:36]: name for name in os.listdir(os.path.join(path, "by-id"))}
        assert set(in_view) == set(listed), "the FUSE view and the catalog disagree"
        for fid in sorted(listed)[:5]:
            with open(os.path.join(path, "by-id", in_view[fid]), "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == listed[fid]["checksum_sha256"]
    rig.daemon.stop()
    result = rig.daemon.cli("rebuild", "--data-dir", rig.daemon.data_dir, "--config",
                            rig._write_config(), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["orphan_data"] == [] and report["unreadable"] == [], report
    verify = rig.daemon.cli("audit", "verify", "--data-dir", rig.daemon.data_dir)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    rig.start()
    relisted = list_all(rig.daemon.api())
    assert set(relisted) == set(listed), "the rebuild from the sidecars changed the catalog"
    assert not ledger.gone & set(relisted), "a rebuild brought back an acknowledged DELETE"


def run_cycles(rig: PowerCutRig, ledger: Ledger, cycles: int, rng: random.Random,
               verified: set[str], *, recovery_cut_every: int = 3) -> dict:
    """``cycles`` power cuts under load, each followed by the checks. Returns counts."""
    counts = {"cycles": 0, "cuts_during_recovery": 0}
    for cycle in range(cycles):
        work = Workload(rig.daemon.api(), rng, ledger, rig.daemon.config["element"]
                        ["initial_mode"])
        work.start()
        time.sleep(rng.uniform(0.2, 1.2))
        work.cut_started.set()
        rig.cut()
        work.join()
        assert not work.errors, work.errors[:5]
        rig.restore()
        if recovery_cut_every and cycle % recovery_cut_every == recovery_cut_every - 1:
            rig.start(wait=False)      # and cut again while it recovers
            time.sleep(rng.uniform(0.0, 0.4))
            rig.cut()
            rig.restore()
            counts["cuts_during_recovery"] += 1
        rig.start()
        try:
            check_cycle(rig, ledger, verified)
        except AssertionError as exc:
            raise AssertionError(f"cycle {cycle}: {exc}\n--- daemon log (errors) ---\n"
                                 + rig.error_lines()) from None
        counts["cycles"] += 1
    return counts


def summary(ledger: Ledger) -> dict:
    return {"uploads": len(ledger.acked),
            "direct_io_uploads": sum(1 for _, size in ledger.acked.values()
                                     if size >= DIRECT_BYTES),
            "patches": ledger.patch_count,
            "deletes": len(ledger.gone), "rebuild_jobs": ledger.rebuilds,
            "mode_changes": ledger.mode_changes}


def have_tools() -> list[str]:
    """The commands the harness needs that this machine lacks."""
    return [c for c in ("losetup", "mkfs.ext4", "e2fsck", "mkfs.xfs", "xfs_repair")
            if shutil.which(c) is None]
