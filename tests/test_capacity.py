"""Capacity: a small tmpfs as the disk root makes a full disk. Uploads that do not fit get
507 with nothing left behind, and the daemon never eats into the reserve."""

import os
import subprocess

import pytest

from harness import store_snapshot, tmp_files

MIB = 1024 * 1024


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)], check=True)
    yield str(mount)
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_gives_507_and_keeps_nothing(make_daemon, tiny_disk):
    d = make_daemon("cap", config={"storage": {"disks": [tiny_disk]}})
    api = d.api()
    first = api.upload_ok(os.urandom(35 * MIB), "first.bin")
    before_objects = objects_files_on(tiny_disk)
    before_catalog = store_snapshot(d.data_dir)["catalog"]

    # Declared length that cannot fit: refused before the body is read.
    r = api.upload(os.urandom(20 * MIB), "second.bin")
    assert r.status == 507, r.body[:300]
    assert r.problem["code"] == "storage_full"
    assert objects_files_on(tiny_disk) == before_objects
    assert os.listdir(os.path.join(tiny_disk, "tmp")) == []
    assert store_snapshot(d.data_dir)["catalog"] == before_catalog

    # The reserve is never crossed: what is left stays free.
    st = os.statvfs(tiny_disk)
    assert st.f_bavail * st.f_frsize > 0
    element = api.get("/api/v1/element").json()
    assert element["capacity"]["disks"][0]["status"] in ("warning", "critical", "full")

    # Small files still fit, and the first file is intact.
    assert api.upload(b"small", "small.txt").status == 201
    assert len(api.download(first["file_id"]).body) == 35 * MIB


def test_streamed_upload_stops_at_the_reserve(make_daemon, tiny_disk):
    """Without a Content-Length the limit is found while streaming."""
    d = make_daemon("cap2", config={"storage": {"disks": [tiny_disk]}})
    api = d.api()
    boundary = "zz"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"huge.bin\"\r\n\r\n").encode()

    def body():
        yield head
        for _ in range(60):  # 60 MiB into a 40 MiB disk
            yield os.urandom(MIB)
        yield f"\r\n--{boundary}--\r\n".encode()

    conn = api.connection()
    try:
        conn.request("POST", "/api/v1/files", body=body(), encode_chunked=True,
                     headers={"Authorization": f"Bearer {api.token}",
                              "Content-Type": f"multipart/form-data; boundary={boundary}",
                              "Transfer-Encoding": "chunked"})
        resp = conn.getresponse()
        status, answer = resp.status, resp.read()
    except (BrokenPipeError, ConnectionResetError):
        resp = conn.getresponse()
        status, answer = resp.status, resp.read()
    finally:
        conn.close()
    assert status == 507, answer[:300]
    assert b'"storage_full"' in answer
    assert os.listdir(os.path.join(tiny_disk, "tmp")) == []
    assert objects_files_on(tiny_disk) == []
    assert store_snapshot(d.data_dir)["pending"] == []
    assert tmp_files(d.data_dir) == []
    assert api.upload(b"after", "after.txt").status == 201


def test_several_disks_fill_the_emptiest_first(make_daemon, tmp_path):
    import subprocess as sp
    roots = []
    for name, size in (("a", "30m"), ("b", "60m")):
        path = tmp_path / name
        path.mkdir()
        sp.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
        roots.append(str(path))
    try:
        d = make_daemon("multi", config={"storage": {"disks": roots}})
        api = d.api()
        api.upload_ok(os.urandom(MIB), "x.bin")
        assert objects_files_on(roots[1]) and not objects_files_on(roots[0])
        for i in range(4):  # b fills to below a's free space, then a takes over
            api.upload_ok(os.urandom(12 * MIB), f"y{i}.bin")
        assert objects_files_on(roots[0])
        element = api.get("/api/v1/element").json()
        assert len(element["capacity"]["disks"]) == 2
        assert element["files"] == 5
        d.stop()
        # Disk roots are found by their identity file, whatever their order.
        d.config = {"storage": {"disks": list(reversed(roots))}}
        d.start()
        assert d.api().get("/api/v1/element").json()["files"] == 5
        for item in d.api().get("/api/v1/files").json()["items"]:
            assert d.api().download(item["file_id"]).status == 200
    finally:
        for r in roots:
            sp.run(["umount", "-l", r], check=False)


def objects_files_on(root: str) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(os.path.join(root, "objects")):
        out.extend(os.path.join(dirpath, n) for n in names)
    return sorted(out)
