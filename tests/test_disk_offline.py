"""A real daemon whose disk is not mounted, and a reader that dies inside a transaction."""

import os
import signal
import subprocess
import sys

from harness import wait_until

READER = """
import sys
from artstored.engine.lmdb_schema import Env
env = Env(sys.argv[1], readonly=True)
txn = env.env.begin()
print("reading", flush=True)
sys.stdin.read()
"""


def test_unmounted_disk_is_offline_not_recreated(make_daemon, tmp_path):
    mount = tmp_path / "srv" / "disk1"
    root = str(mount / "artstore")
    d = make_daemon("node", config={"storage": {"disks": [root]}})
    api = d.api()
    kept = api.upload_ok(b"stays on the disk", "kept.txt")
    d.stop()
    os.rename(mount, tmp_path / "srv" / "disk1.away")
    os.makedirs(mount)  # the empty mount point of a disk that is not mounted
    d.start()
    api = d.api()
    disks = api.get("/api/v1/element").json()["capacity"]["disks"]
    assert [x["status"] for x in disks] == ["offline"] and "mounted" in disks[0]["reason"]
    refused = api.upload(b"must not land on the parent filesystem", "new.txt")
    assert refused.status == 503 and refused.problem["code"] == "disk_offline", refused.body
    assert root in refused.problem["detail"]
    gone = api.download(kept["file_id"])
    assert gone.status == 503 and gone.problem["code"] == "disk_offline"
    assert api.get(f"/api/v1/files/{kept['file_id']}").status == 200  # metadata stays
    assert os.listdir(mount) == [], "the daemon re-created the disk root"
    assert any(root in line and "offline" in line for line in d.log_lines())
    d.stop()
    os.rmdir(mount)
    os.rename(tmp_path / "srv" / "disk1.away", mount)  # mounted again
    d.start()
    assert d.api().download(kept["file_id"]).body == b"stays on the disk"


def test_running_daemon_clears_a_dead_readers_slot(daemon):
    from artstored.engine.lmdb_schema import Env

    path = os.path.join(daemon.data_dir, "store.lmdb")
    reader = subprocess.Popen([sys.executable, "-c", READER, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    assert reader.stdout.readline() == b"reading\n"
    reader.send_signal(signal.SIGKILL)
    reader.wait()
    env = Env(path, readonly=True)
    try:
        assert f"{reader.pid} " in env.env.readers()
        wait_until(lambda: f"{reader.pid} " not in env.env.readers(), 30,
                   "the daemon to clear the killed reader's LMDB slot")
    finally:
        env.close()
