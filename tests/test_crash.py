"""Crash safety: SIGKILL at random moments during concurrent uploads and metadata changes.

After each restart every upload that got a 201 is there with the right bytes, every
acknowledged PATCH is there, nothing partial is visible anywhere (catalog, list, objects/,
tmp/), and no PENDING intent is left. Then the catalog is rebuilt from the sidecars alone.
"""

import hashlib
import http.client
import json
import os
import random
import shutil
import threading
import time

from harness import Api, multipart, objects_files, store_snapshot, tmp_files

CYCLES = 12   # make bench-crash soaks 1,000 power cuts; this keeps make test short
UPLOADERS = 6


class Workload:
    """Uploader threads and one patcher, recording what the daemon acknowledged."""

    def __init__(self, port: int, token: str, rng: random.Random, acked: dict, patched: dict):
        self.port = port
        self.token = token
        self.rng = rng
        self.acked = acked          # file_id -> (sha256, size)
        self.patched = patched      # file_id -> (version, description)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.killed = threading.Event()   # set just before the SIGKILL
        self.errors: list[str] = []       # failures in the threads: the test asserts none
        self.threads = [threading.Thread(target=self._guard, args=(self.upload_loop, i),
                                         daemon=True) for i in range(UPLOADERS)]
        self.threads.append(threading.Thread(target=self._guard, args=(self.patch_loop,),
                                             daemon=True))

    def _guard(self, loop, *args):
        try:
            loop(*args)
        except BaseException as exc:  # an assertion in a thread must fail the test
            self.errors.append(f"{loop.__name__}: {exc!r}")

    def _unexpected(self, what: str, status: int, body: bytes) -> None:
        """An answer that is neither success nor the daemon dying: before the kill, a bug."""
        if not self.killed.is_set():
            self.errors.append(f"{what}: {status} {body[:300]!r}")

    def start(self):
        for t in self.threads:
            t.start()

    def join(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)
            if t.is_alive():
                self.errors.append(f"{t.name} did not stop")

    def _conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)

    def upload_loop(self, n: int):
        rng = random.Random(self.rng.random())
        while not self.stop.is_set():
            size = rng.choice([0, 1, 100, 4096, 70_000, 300_000, 2_000_000,
                               rng.randint(1, 9_000_000)])
            data = rng.randbytes(size)
            sha = hashlib.sha256(data).hexdigest()
            body, ctype = multipart({"sha256": sha, "description": f"w{n}"}, content=data,
                                    filename=f"crash-{n}-{size}.bin")
            try:
                conn = self._conn()
                conn.request("POST", "/api/v1/files", body=body,
                             headers={"Content-Type": ctype,
                                      "Authorization": f"Bearer {self.token}"})
                resp = conn.getresponse()
                answer = resp.read()
                conn.close()
            except (OSError, http.client.HTTPException):
                return  # the daemon died
            if resp.status == 201:
                attr = json.loads(answer)
                assert attr["checksum_sha256"] == sha and attr["file_size"] == size, attr
                with self.lock:
                    self.acked[attr["file_id"]] = (sha, size)
            else:
                self._unexpected("upload", resp.status, answer)

    def patch_loop(self):
        rng = random.Random(self.rng.random())
        while not self.stop.is_set():
            with self.lock:
                if not self.acked:
                    candidates = []
                else:
                    candidates = rng.sample(sorted(self.acked), 1)
            if not candidates:
                time.sleep(0.01)
                continue
            fid = candidates[0]
            text = f"patched {rng.random()}"
            try:
                conn = self._conn()
                conn.request("PATCH", f"/api/v1/files/{fid}",
                             body=json.dumps({"description": text}).encode(),
                             headers={"Content-Type": "application/merge-patch+json",
                                      "Authorization": f"Bearer {self.token}"})
                resp = conn.getresponse()
                answer = resp.read()
                conn.close()
            except (OSError, http.client.HTTPException):
                return
            if resp.status == 200:
                doc = json.loads(answer)
                with self.lock:
                    prev = self.patched.get(fid, (0, None))
                    if doc["version"] > prev[0]:
                        self.patched[fid] = (doc["version"], text)
            else:
                self._unexpected("patch", resp.status, answer)


def list_all(api: Api) -> list[dict]:
    items, cursor = [], None
    while True:
        page = api.get("/api/v1/files?limit=1000" + (f"&cursor={cursor}" if cursor else ""))
        assert page.status == 200
        doc = page.json()
        items.extend(doc["items"])
        cursor = doc["next_cursor"]
        if not cursor:
            return items


def check_consistency(daemon, api: Api, acked: dict, patched: dict, verify_ids) -> dict:
    snapshot = store_snapshot(daemon.data_dir)
    assert snapshot["pending"] == [], "PENDING intents left after recovery"
    assert tmp_files(daemon.data_dir) == []
    listed = {a["file_id"]: a for a in list_all(api)}
    assert set(snapshot["catalog"]) == set(listed)
    # Every acknowledged upload is there.
    missing = set(acked) - set(listed)
    assert not missing, f"{len(missing)} acknowledged uploads lost: {sorted(missing)[:3]}"
    for fid, (sha, size) in acked.items():
        assert listed[fid]["checksum_sha256"] == sha and listed[fid]["file_size"] == size
    for fid, (version, text) in patched.items():
        assert listed[fid]["version"] >= version
        if listed[fid]["version"] == version:
            assert listed[fid]["description"] == text
    # objects/ holds exactly data + sidecar for each catalogued file, nothing else.
    files = objects_files(daemon.data_dir)
    names = [os.path.basename(f) for f in files]
    assert not [n for n in names if n.startswith(".")], "temporary sidecar left"
    expected = sorted([a["storage_filename"] for a in listed.values()] +
                      [a["storage_filename"] + ".attr.json" for a in listed.values()])
    assert sorted(names) == expected
    # Content of the files to verify (new ones each cycle; every file at the end).
    for fid in verify_ids:
        attr = listed[fid]
        r = api.download(fid)
        assert r.status == 200
        assert len(r.body) == attr["file_size"]
        assert hashlib.sha256(r.body).hexdigest() == attr["checksum_sha256"]
    return listed


def test_sigkill_cycles_lose_nothing_acknowledged(make_daemon):
    rng = random.Random(int(os.environ.get("ARTSTORE_CRASH_SEED", "20261123")))
    daemon = make_daemon("crash")
    acked: dict = {}
    patched: dict = {}
    verified: set = set()
    recoveries = {"rolled_forward": 0, "rolled_back": 0, "unresolved": 0, "tmp_removed": 0}
    for cycle in range(CYCLES):
        work = Workload(daemon.port, daemon.admin_token(), rng, acked, patched)
        work.start()
        time.sleep(rng.uniform(0.05, 1.2))  # the random moment of the crash
        work.killed.set()
        daemon.kill()
        work.join()
        assert not work.errors, work.errors[:5]
        daemon.start()
        api = daemon.api()
        recovery = api.get("/api/v1/element").json()["recovery"]
        for key in recoveries:
            recoveries[key] += recovery[key]
        listed = check_consistency(daemon, api, acked, patched,
                                   verify_ids=[f for f in acked if f not in verified])
        verified.update(acked)
        # Unacknowledged uploads that were complete may have been rolled forward: they
        # must be whole (checked through the listing above and the download below).
        for fid in set(listed) - set(acked) - verified:
            r = api.download(fid)
            assert hashlib.sha256(r.body).hexdigest() == listed[fid]["checksum_sha256"]
            verified.add(fid)
    print(f"\n{CYCLES} SIGKILL cycles: {len(acked)} uploads and {len(patched)} patches "
          f"acknowledged; recovery: {recoveries}")
    assert recoveries["unresolved"] == 0
    assert len(acked) > CYCLES, f"too few uploads acknowledged ({len(acked)}) to mean much"
    # The kills must have caught uploads in flight, or this test proved nothing.
    assert recoveries["tmp_removed"] + recoveries["rolled_back"] + \
        recoveries["rolled_forward"] > 0
    listed = check_consistency(daemon, daemon.api(), acked, patched, verify_ids=list(acked))

    # Rebuild: the catalog comes back exactly from the attr.json files alone.
    daemon.stop()
    before = store_snapshot(daemon.data_dir)["catalog"]
    shutil.rmtree(os.path.join(daemon.data_dir, "store.lmdb"))
    result = daemon.cli("rebuild", "--data-dir", daemon.data_dir, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["files"] == len(before)
    assert report["orphan_data"] == [] and report["unreadable"] == []
    assert sorted(store_snapshot(daemon.data_dir)["catalog"]) == sorted(before)
    daemon.start()  # no accounts now: a new initial admin is made
    relisted = {a["file_id"]: a for a in list_all(daemon.api())}
    assert relisted == listed
