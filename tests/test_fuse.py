"""The FUSE view with a real mount: shell tools, live updates, concurrency, crashes."""

import errno
import hashlib
import os
import signal
import subprocess
import threading
import time
from datetime import datetime

import pytest

from harness import ARTSTORE, wait_until


class Mount:
    def __init__(self, data_dir: str, mountpoint: str):
        self.data_dir = data_dir
        self.path = mountpoint
        self.proc = None

    def start(self) -> "Mount":
        os.makedirs(self.path, exist_ok=True)
        self.log = open(self.path.rstrip("/") + ".log", "ab")
        self.proc = subprocess.Popen([ARTSTORE, "mount", "--data-dir", self.data_dir, self.path],
                                     stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"artstore mount exited with {self.proc.returncode}")
            if os.path.ismount(self.path) and os.path.exists(os.path.join(self.path, "README")):
                return self
            time.sleep(0.05)
        raise TimeoutError("mount did not come up")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        return self.proc.returncode

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", self.path], capture_output=True)

    def day_dir(self) -> str:
        today = datetime.utcnow()
        return os.path.join(self.path, "by-date", f"{today:%Y/%m/%d}")


@pytest.fixture
def mount_factory(tmp_path):
    mounts = []

    def make(data_dir: str, name: str = "mnt") -> Mount:
        m = Mount(data_dir, str(tmp_path / name)).start()
        mounts.append(m)
        return m
    yield make
    for m in mounts:
        if m.proc.poll() is None:
            assert m.stop() == 0
        assert not os.path.ismount(m.path), "stale mount left behind"


def run(*cmd, check=True, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(list(cmd), capture_output=True, **kw)
    if check:
        assert result.returncode == 0, (cmd, result.stderr)
    return result


def wait_for(predicate, timeout: float, what: str) -> float:
    """Poll until ``predicate()`` holds (failing with ``what`` after ``timeout`` s); the
    monotonic time it was first seen to hold."""
    wait_until(predicate, timeout, what)
    return time.monotonic()


NAMES = ["Годовой отчёт 2024.pdf", "with spaces and #hash.txt", "報告書.docx",
         "l" * 240 + ".txt", "clash.txt", "clash.txt"]


@pytest.fixture
def populated(daemon, mount_factory):
    api = daemon.api()
    files = []
    for i, name in enumerate(NAMES):
        data = (f"content {i} needle-{i}\n".encode()) * (100 + i)
        attr = api.upload_ok(data, name, fields={"description": f"file {i}",
                                                   "custom_attributes": {"dept": "finance",
                                                                         "n": i}})
        files.append((attr, data))
    return daemon, mount_factory(daemon.data_dir), files


def test_shell_tools(populated, tmp_path):
    daemon, mnt, files = populated
    day = mnt.day_dir()
    listing = run("ls", "-l", day).stdout.decode()
    clash_name = f"clash [{files[5][0]['file_id'].replace('-', '')[-8:]}].txt"
    for name in ("Годовой отчёт 2024.pdf", "with spaces and #hash.txt", "報告書.docx",
                 "clash.txt", clash_name):
        assert name in listing, name
    assert sorted(os.listdir(day)) == sorted(["Годовой отчёт 2024.pdf",
                                               "with spaces and #hash.txt", "報告書.docx",
                                               "l" * 240 + ".txt",
                                               "clash.txt", clash_name])
    for attr, data in files:
        path = os.path.join(mnt.path, "by-id", attr["file_id"] + os.path.splitext(
            attr["original_filename"])[1])
        st = os.stat(path)
        assert st.st_size == len(data) and st.st_mode & 0o777 == 0o444
        created = datetime.fromisoformat(attr["created_at"].replace("Z", "+00:00"))
        assert abs(st.st_mtime - created.timestamp()) < 1e-3
        with open(path, "rb") as f:
            assert f.read() == data
        src = tmp_path / "src.bin"
        src.write_bytes(data)
        run("cmp", str(src), path)
    assert run("stat", "-c", "%s", os.path.join(day, "clash.txt")).stdout.strip() == \
        str(len(files[4][1])).encode()
    found = run("find", os.path.join(mnt.path, "by-id"), "-type", "f").stdout.splitlines()
    assert len(found) == len(files)
    grep = run("grep", "-rl", "needle-2", os.path.join(mnt.path, "by-date")).stdout.decode()
    assert grep.strip().endswith("報告書.docx")
    dest = tmp_path / "copy"
    run("rsync", "-a", day + "/", str(dest) + "/")
    assert sorted(os.listdir(dest)) == sorted(os.listdir(day))
    assert (dest / "報告書.docx").read_bytes() == files[2][1]
    tar = run("tar", "cf", "-", "-C", mnt.path, "by-date").stdout
    names = run("tar", "tf", "-", input=tar).stdout.decode().splitlines()
    assert any(n.endswith("Годовой отчёт 2024.pdf") for n in names)
    xattrs = run("getfattr", "-d", "-e", "text", os.path.join(day, "報告書.docx")).stdout.decode()
    assert f'user.artstore.file_id="{files[2][0]["file_id"]}"' in xattrs
    assert f'user.artstore.sha256="{files[2][0]["checksum_sha256"]}"' in xattrs
    assert 'user.artstore.attr.dept="finance"' in xattrs
    assert 'user.artstore.attr.n="2"' in xattrs
    assert 'user.artstore.mode="rw"' in xattrs
    readme = open(os.path.join(mnt.path, "README")).read()
    assert "by-date" in readme and "search" in readme


def test_every_write_is_erofs(populated):
    _, mnt, files = populated
    day = mnt.day_dir()
    target = os.path.join(day, "clash.txt")
    attempts = [
        ["touch", os.path.join(day, "new.txt")],
        ["sh", "-c", f"echo x > '{target}'"],
        ["sh", "-c", f"echo x >> '{target}'"],
        ["rm", target],
        ["mv", target, os.path.join(day, "moved.txt")],
        ["mkdir", os.path.join(day, "sub")],
        ["rmdir", day],
        ["chmod", "777", target],
        ["truncate", "-s", "0", target],
        ["setfattr", "-n", "user.x", "-v", "1", target],
        ["ln", target, os.path.join(day, "hard")],
        ["ln", "-s", target, os.path.join(day, "soft")],
    ]
    for cmd in attempts:
        result = run(*cmd, check=False)
        assert result.returncode != 0, cmd
        assert b"Read-only file system" in result.stderr, (cmd, result.stderr)
    with pytest.raises(OSError) as info:
        os.open(target, os.O_WRONLY)
    assert info.value.errno == errno.EROFS


def test_new_uploads_appear_and_deletes_vanish(make_daemon, mount_factory):
    d = make_daemon("edit", config={"element": {"initial_mode": "edit"}})
    api = d.api()
    api.upload_ok(b"first", "first.txt")
    mnt = mount_factory(d.data_dir)
    t0 = time.monotonic()
    attr = api.upload_ok(b"fresh bytes", "fresh.txt")
    by_id = os.path.join(mnt.path, "by-id", attr["file_id"] + ".txt")
    seen = wait_for(lambda: os.path.exists(by_id) and
                    os.path.exists(os.path.join(mnt.day_dir(), "fresh.txt")), 2,
                    "a new upload to appear in by-id/ and by-date/")
    print(f"\nnew upload visible after {(seen - t0) * 1000:.0f} ms")
    with open(by_id, "rb") as f:
        assert f.read() == b"fresh bytes"
    assert api.request("DELETE", f"/api/v1/files/{attr['file_id']}").status == 204
    wait_for(lambda: "fresh.txt" not in os.listdir(mnt.day_dir()) and not os.path.exists(by_id),
             2, "a deleted file to vanish from by-id/ and by-date/")


def test_eight_concurrent_readers(daemon, mount_factory):
    api = daemon.api()
    originals = {}
    for i in range(8):
        data = os.urandom(6 * 1024 * 1024 + i)
        attr = api.upload_ok(data, f"big-{i}.bin")
        originals[attr["file_id"]] = hashlib.sha256(data).hexdigest()
    mnt = mount_factory(daemon.data_dir)
    results = {}

    def read(file_id):
        h = hashlib.sha256()
        with open(os.path.join(mnt.path, "by-id", file_id + ".bin"), "rb") as f:
            while chunk := f.read(128 * 1024):
                h.update(chunk)
        results[file_id] = h.hexdigest()

    threads = [threading.Thread(target=read, args=(fid,)) for fid in originals]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == originals


def test_crashes_on_either_side(daemon, mount_factory):
    api = daemon.api()
    first = api.upload_ok(b"before", "before.txt")
    mnt = mount_factory(daemon.data_dir)
    # Killing the mount leaves the daemon working.
    mnt.kill()
    assert api.upload_ok(b"while unmounted", "during.txt")["file_size"] == 15
    mnt.start()
    # Restarting the daemon leaves the mount working.
    daemon.restart()
    api = daemon.api()
    path = os.path.join(mnt.path, "by-id", first["file_id"] + ".txt")
    with open(path, "rb") as f:
        assert f.read() == b"before"
    later = api.upload_ok(b"after restart", "after.txt")
    wait_for(lambda: os.path.exists(os.path.join(mnt.path, "by-id", later["file_id"] + ".txt")),
             2, "an upload made after the daemon's restart to appear in the mount")
    assert len(os.listdir(os.path.join(mnt.path, "by-id"))) == 3


def test_archived_element(daemon, mount_factory):
    api = daemon.api()
    attr = api.upload_ok(b"old record", "old.txt")
    mnt = mount_factory(daemon.data_dir)
    path = os.path.join(mnt.path, "by-id", attr["file_id"] + ".txt")
    for mode in ("ro", "ar"):
        assert api.request("PUT", "/api/v1/element/mode", json_body={"mode": mode}).status == 200
    result = run("cat", path, check=False)
    assert result.returncode != 0 and b"No medium found" in result.stderr
    assert os.stat(path).st_size == 10  # metadata still there
    xattrs = run("getfattr", "-d", "-e", "text", path).stdout.decode()
    assert 'user.artstore.archived="yes"' in xattrs and 'user.artstore.mode="ar"' in xattrs


def test_search_directory_and_statfs(daemon, mount_factory):
    api = daemon.api()
    a = api.upload_ok(b"x", "invoice-9.pdf", fields={"description": "счета за март",
                                                     "custom_attributes": {"dept": "finance"}})
    api.upload_ok(b"y", "memo.txt", fields={"description": "nothing to see"})
    mnt = mount_factory(daemon.data_dir)
    query_dir = os.path.join(mnt.path, "search", "счёт AND attr.dept:finance")
    wait_for(lambda: os.listdir(query_dir) == ["invoice-9.pdf"], 3,
             "the search directory to list exactly invoice-9.pdf")
    assert os.stat(os.path.join(query_dir, "invoice-9.pdf")).st_ino == \
        os.stat(os.path.join(mnt.path, "by-id", a["file_id"] + ".pdf")).st_ino
    with pytest.raises(OSError) as info:
        os.listdir(os.path.join(mnt.path, "search", "(broken"))
    assert info.value.errno == errno.EINVAL
    st = os.statvfs(mnt.path)
    real = os.statvfs(daemon.data_dir)
    assert abs(st.f_blocks * st.f_frsize - real.f_blocks * real.f_frsize) < 1 << 20
    assert "search" in open(os.path.join(mnt.path, "search", "README")).read()


def test_sigint_and_fusermount_unmount_cleanly(daemon, tmp_path):
    for how in ("SIGINT", "fusermount"):
        m = Mount(daemon.data_dir, str(tmp_path / f"m-{how}")).start()
        if how == "SIGINT":
            m.proc.send_signal(signal.SIGINT)
        else:
            run("fusermount3", "-u", m.path)
        assert m.proc.wait(30) == 0
        assert not os.path.ismount(m.path)
