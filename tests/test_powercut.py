"""Power cuts under a mixed load, on ext4 and XFS, with both sync methods (see powercut.py).

After each cut and restart: every upload that got a 201 is there with its bytes and
SHA-256; every acknowledged PATCH is at its version in the catalog and in attr.json; every
acknowledged DELETE stays gone; nothing partial is in the catalog, the list, objects/ or
tmp/; no intent is left; the audit chain verifies. At the end of each case search and the
FUSE view agree with the catalog, and an offline rebuild from the sidecars brings back no
acknowledged DELETE. Every third cycle also cuts the power again during recovery.
"""

import contextlib
import os
import random
import signal
import subprocess
import time

import pytest

import powercut as P
from harness import ARTSTORE, SUMMARY

# (filesystem, sync_method, mode, cycles): edit mode exercises DELETEs, rw mode changes
# (rw ↔ ro) of the element; both run uploads, PATCHes and rebuild jobs.
CASES = [
    ("ext4", "syncfs", "rw", 7),     # make bench-crash soaks 1,000 cuts; these guard make test
    ("ext4", "fsync", "edit", 7),
    ("xfs", "syncfs", "edit", 3),
    ("xfs", "fsync", "rw", 3),
]


@contextlib.contextmanager
def mount_view(workdir):
    @contextlib.contextmanager
    def mount(data_dir, disk_roots):
        path = os.path.join(workdir, "view")
        os.makedirs(path, exist_ok=True)
        config = os.path.join(workdir, "mount.toml")
        with open(config, "w") as f:
            f.write("[storage]\ndisks = [" + ", ".join(f'"{r}"' for r in disk_roots) + "]\n")
        with open(os.path.join(workdir, "mount.log"), "ab") as log:
            proc = subprocess.Popen([ARTSTORE, "mount", "--data-dir", data_dir, "--config",
                                     config, path], stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(os.path.join(path, "README")):
                assert proc.poll() is None, f"artstore mount exited {proc.returncode}"
                assert time.monotonic() < deadline, "the mount did not come up"
                time.sleep(0.05)
            yield path
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True)
    yield mount


@pytest.mark.parametrize("fstype,sync_method,mode,cycles", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_power_cuts_lose_nothing_acknowledged(tmp_path, fstype, sync_method, mode, cycles):
    assert os.geteuid() == 0, "loop devices and mounts need root (CI runs as root)"
    assert not P.have_tools(), f"missing: {P.have_tools()} (scripts/install-system-deps.sh)"
    seed = int(os.environ.get("ARTSTORE_POWERCUT_SEED", "20261127")) + len(fstype) + cycles
    rng = random.Random(seed)
    rig = P.PowerCutRig(str(tmp_path), fstype, sync_method, mode)
    try:
        rig.start()
        ledger = P.Ledger(mode)
        verified: set[str] = set()
        counts = P.run_cycles(rig, ledger, cycles, rng, verified)
        with mount_view(str(tmp_path)) as mount:
            P.check_case(rig, ledger, mount)
        done = P.summary(ledger)
        SUMMARY.append(f"power cuts {fstype}/{sync_method}/{mode}: {counts['cycles']} cycles "
                       f"(+{counts['cuts_during_recovery']} during recovery), acknowledged "
                       + ", ".join(f"{v} {k}" for k, v in done.items())
                       + "; lost 0, resurrected 0, partial 0")
        assert counts["cycles"] == cycles
        assert done["uploads"] > cycles, f"too few uploads acknowledged to mean much: {done}"
        if mode == "edit":   # (in rw the element spends part of the time in ro)
            assert done["direct_io_uploads"] >= 1, f"no O_DIRECT upload acknowledged: {done}"
        assert done["patches"] > 0 and done["rebuild_jobs"] > 0, done
        if mode == "edit":
            assert done["deletes"] > 0, done
        else:
            assert done["mode_changes"] > 0, done
    finally:
        rig.close()
