"""The operator's host: configuration, logs, metrics, systemd, lifecycle, man pages."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

from artstored import config as C
from harness import ARTSTORE, ARTSTORED, BIN, Api, Daemon, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bad_config_is_refused_at_start_naming_key_and_file(tmp_path):
    for text, key in (('[limits]\nmax_upload_bytes = "lots"\n', "limits.max_upload_bytes"),
                      ('[element]\ninitial_mode = "rwx"\n', "element.initial_mode"),
                      ('[storage]\nmistake = 1\n', "storage.mistake")):
        path = tmp_path / "bad.toml"
        path.write_text(text)
        r = subprocess.run([ARTSTORED, "--config", str(path), "--data-dir",
                            str(tmp_path / "d")], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, r.stderr
        assert key in r.stderr and str(path) in r.stderr
    r = subprocess.run([ARTSTORED, "--data-dir", str(tmp_path / "d")], capture_output=True,
                       text=True, timeout=30,
                       env=dict(os.environ, ARTSTORE_AUTH_TOKEN_TTL_SECONDS="soon"))
    assert r.returncode == 2 and "ARTSTORE_AUTH_TOKEN_TTL_SECONDS" in r.stderr


def test_env_overrides_the_file(make_daemon, tmp_path):
    d = make_daemon("env", config={"limits": {"max_upload_bytes": 1000}},
                    env={"ARTSTORE_LIMITS_MAX_UPLOAD_BYTES": "2000"})
    assert d.api().get("/api/v1/element").json()["max_upload_bytes"] == 2000
    shown = subprocess.run([ARTSTORE, "config", "show", "--json", "--config",
                            d.data_dir.rstrip("/") + ".toml"], capture_output=True, text=True,
                           env=dict(os.environ, ARTSTORE_LIMITS_MAX_UPLOAD_BYTES="2000"))
    rows = {r["key"]: r for r in json.loads(shown.stdout)["items"]}
    assert rows["limits.max_upload_bytes"] == {"key": "limits.max_upload_bytes",
                                               "value": 2000,
                                               "source": "env ARTSTORE_LIMITS_MAX_UPLOAD_BYTES"}
    assert rows["server.listen"]["source"] == "env ARTSTORE_LISTEN" or \
        rows["server.listen"]["source"] == "default"


def test_every_log_line_is_json_and_carries_its_request_id(daemon):
    api = daemon.api()
    r = api.request("PUT", "/api/v1/element/mode", json_body={"mode": "ro"},
                    headers={"X-Request-Id": "req-mode-42"})
    assert r.status == 200 and r.headers["x-request-id"] == "req-mode-42"
    api.get("/api/v1/files/nope", headers={"X-Request-Id": "req-404"})
    made = api.get("/api/v1/files").headers["x-request-id"]
    wait_until(lambda: any(made in line for line in daemon.log_lines()), 10,
               f"the access line of request {made} in the log")
    lines = daemon.log_lines()
    docs = [json.loads(line) for line in lines]  # every line is JSON
    assert all({"ts", "level", "logger", "msg"} <= set(d) for d in docs)
    mode_lines = [d for d in docs if d.get("request_id") == "req-mode-42"]
    loggers = {d["logger"] for d in mode_lines}
    assert {"artstored.engine", "artstored.access"} <= loggers, mode_lines
    access = [d for d in mode_lines if d["logger"] == "artstored.access"][0]
    assert access["route"] == "/api/v1/element/mode" and access["status"] == 200
    assert access["method"] == "PUT" and "duration_ms" in access and "bytes_out" in access
    assert any(d.get("request_id") == made for d in docs)


def test_metrics_pass_promtool_after_traffic(daemon):
    api = daemon.api()
    attr = api.upload_ok(b"metrics", "m.txt")
    api.download(attr["file_id"])
    api.get("/api/v1/search?q=m")
    api.request("POST", "/api/v1/auth/token", body=b"grant_type=client_credentials&client_id=x"
                b"&client_secret=y", headers={"Content-Type": "application/x-www-form-urlencoded"})
    text = Api(daemon.port).get("/metrics").body.decode()
    for name in ("artstore_http_requests_total", "artstore_http_request_duration_seconds_bucket",
                 "artstore_http_received_bytes_total", "artstore_http_sent_bytes_total",
                 "artstore_group_commit_seconds_bucket", "artstore_group_commit_batch_size_bucket",
                 "artstore_index_lag_records", "artstore_index_lag_seconds",
                 "artstore_disk_free_bytes", "artstore_disk_total_bytes",
                 'artstore_files{mode="rw",retention="permanent"} 1.0',
                 'artstore_token_failures_total{reason="invalid_client"} 1.0'):
        assert name in text, name
    assert 'route="/api/v1/files/{file_id}/download"' in text  # patterns, not paths
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _notify_listener(path: str, messages: list, stop: threading.Event):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.1)

    def run():
        while not stop.is_set():
            try:
                data = sock.recv(4096).decode()
            except socket.timeout:
                continue
            messages.append((time.monotonic(), data))
        sock.close()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sd_notify_ready_after_recovery_and_watchdog(tmp_path):
    from test_lifecycle import _leave_pending_uploads

    data_dir = str(tmp_path / "node")
    _leave_pending_uploads(data_dir, count=300)
    notify = str(tmp_path / "notify.sock")
    messages, stop = [], threading.Event()
    listener = _notify_listener(notify, messages, stop)
    d = Daemon(data_dir, env={"NOTIFY_SOCKET": notify, "WATCHDOG_USEC": "400000"})
    d.start(wait=False)
    try:
        wait_until(lambda: any("READY=1" in m for _, m in messages), 60,
                   "READY=1 on the notify socket")
        ready_at = next(t for t, m in messages if "READY=1" in m)
        # READY came only once recovery had finished.
        assert Api(d.port).get("/health/startup").status == 200
        element = d.api().get("/api/v1/element").json()
        assert element["recovery"]["rolled_forward"] == 300
        texts = [m for _, m in messages]
        first_status = next(i for i, m in enumerate(texts) if m.startswith("STATUS=recovering"))
        assert first_status < next(i for i, m in enumerate(texts) if "READY=1" in m)

        def pings_after_ready() -> list[float]:
            return [t for t, m in messages if m == "WATCHDOG=1" and t > ready_at]

        # WATCHDOG_USEC=400000: a ping at least every 0.2 s, so four within 1.5 s of READY.
        pings = wait_until(lambda: len(p := pings_after_ready()) >= 4 and p, 10,
                           "four WATCHDOG=1 pings after READY=1")
        assert pings[3] - ready_at <= 1.5, ([p - ready_at for p in pings],
                                            [m for _, m in messages])
        assert d.stop() == 0
        wait_until(lambda: any("STOPPING=1" in m for _, m in messages), 5,
                   "STOPPING=1 on the notify socket")
    finally:
        stop.set()
        listener.join()
        d.kill()


def test_sighup_reloads_log_settings(make_daemon, tmp_path):
    log_file = tmp_path / "artstored.json.log"
    d = make_daemon("hup", config={"log": {"level": "info"}})
    api = d.api()
    d.config = {"log": {"level": "warning", "file": str(log_file)},
                "limits": {"max_upload_bytes": 12345}}
    d._write_config()
    d.proc.send_signal(signal.SIGHUP)

    def reloads(path) -> list[dict]:
        try:
            text = open(path, encoding="utf-8").read()
        except FileNotFoundError:
            return []
        return [json.loads(l) for l in text.splitlines() if "configuration reloaded" in l]

    reloaded = wait_until(lambda: reloads(log_file), 10,
                          f"'configuration reloaded' in the new log file {log_file}")
    assert "limits.max_upload_bytes" in reloaded[-1]["restart_needed_for"]
    api.get("/api/v1/files", headers={"X-Request-Id": "after-hup"})
    # Still running, and the file is reopened after a rotation.
    assert api.get("/api/v1/files").status == 200
    rotated = str(log_file) + ".1"
    os.rename(log_file, rotated)
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: reloads(log_file), 10, "the log file reopened after its rotation")
    assert len(reloads(rotated)) == 1  # the second reload went to the new file only
    # The second reload was logged after the "after-hup" request had been answered, so by
    # now the request's access line would be in one of the logs: at warning it is not.
    everything = d.log_lines() + open(rotated).read().splitlines() + \
        log_file.read_text().splitlines()
    assert not any("after-hup" in line for line in everything)  # info: off


def test_systemd_units_verify():
    tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"units-{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    try:
        names = []
        for unit in ("artstored.service", "artstore-mount.service"):
            text = open(os.path.join(ROOT, "systemd", unit)).read()
            # The units name the installed paths; point them at this venv's entry points.
            with open(os.path.join(tmp, unit), "w") as f:
                f.write(text.replace("/usr/local/bin/", BIN + "/"))
            names.append(os.path.join(tmp, unit))
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", *names],
                           capture_output=True, text=True, cwd=tmp)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        shutil.rmtree(tmp)
    unit = open(os.path.join(ROOT, "systemd", "artstored.service")).read()
    for directive in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "User=artstore",
                      "ProtectSystem=strict", "ReadWritePaths=/var/lib/artstore",
                      "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=yes",
                      "ProtectKernelTunables=yes", "ProtectKernelModules=yes",
                      "RestrictAddressFamilies=", "SystemCallFilter=@system-service",
                      "CapabilityBoundingSet=\n"):
        assert directive in unit, directive
    mount = open(os.path.join(ROOT, "systemd", "artstore-mount.service")).read()
    assert "DeviceAllow=/dev/fuse" in mount and "fusermount3 -u" in mount


def test_man_pages_are_generated_and_complete():
    r = subprocess.run([os.path.join(BIN, "python"), os.path.join(ROOT, "scripts", "gen_man.py"),
                        "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from artstored.cli import build_parser

    pages = {name: open(os.path.join(ROOT, "man", name)).read()
             for name in os.listdir(os.path.join(ROOT, "man"))}
    every = "\n".join(pages.values())
    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        assert f"Ic {name}" in pages["artstore.1"], name
        for action in sub._actions:
            if action.option_strings and action.option_strings[-1] != "--help":
                assert f"Fl -{action.option_strings[-1][2:]}" in every, (name, action.dest)
    for key in C.KEYS:
        assert f"Cm {key.name} No" in pages["artstore.toml.5"], key.dotted
        assert key.env in pages["artstore.toml.5"], key.env
    artstored = pages["artstored.8"]
    for needle in ("Fl -config", "Fl -data-dir", "Fl -listen", "SIGTERM", "SIGHUP",
                   "NOTIFY_SOCKET", "WATCHDOG_USEC", "EXIT STATUS", "EXAMPLES",
                   "initial-admin.json"):
        assert needle in artstored, needle
    for page in pages.values():
        assert ".Sh EXAMPLES" in page and ".Sh SEE ALSO" in page


def test_example_config_lists_every_key_with_its_default():
    text = open(os.path.join(ROOT, "etc", "artstored.toml.example")).read()
    assert text == C.example_toml(), "run: artstore config example > etc/artstored.toml.example"
    import tomllib
    uncommented = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.M)
    doc = tomllib.loads(uncommented)
    for key in C.KEYS:
        assert doc[key.section][key.name] == key.default, key.dotted


def test_install_system_stages_every_file(tmp_path):
    stage = tmp_path / "stage"
    r = subprocess.run([os.path.join(ROOT, "scripts", "install-system.sh")],
                       env=dict(os.environ, DESTDIR=str(stage), ARTSTORE_INSTALL_VENV="0"),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    for path in ("etc/systemd/system/artstored.service", "etc/systemd/system/artstore-mount.service",
                 "etc/artstore/artstored.toml.example", "etc/artstore/artstored.toml",
                 "usr/local/share/man/man1/artstore.1", "usr/local/share/man/man5/artstore.toml.5",
                 "usr/local/share/man/man8/artstored.8", "usr/local/share/man/man8/artstore-mount.8"):
        assert (stage / path).exists(), path
    assert os.readlink(stage / "usr/local/bin/artstored") == "/opt/artstore/venv/bin/artstored"
    C.load(str(stage / "etc/artstore/artstored.toml"), env={})  # the installed file is valid


def test_mount_writes_its_metrics(daemon, tmp_path):
    daemon.api().upload_ok(b"x", "x.txt")
    mnt, metrics = tmp_path / "mnt", tmp_path / "mount.prom"
    mnt.mkdir()
    proc = subprocess.Popen([ARTSTORE, "mount", "--data-dir", daemon.data_dir, str(mnt),
                             "--metrics-file", str(metrics)])
    try:
        wait_until(lambda: (mnt / "README").exists(), 20, f"the mount at {mnt} to come up")
        for name in os.listdir(mnt / "by-id"):
            (mnt / "by-id" / name).read_bytes()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    text = metrics.read_text()
    assert 'artstore_fuse_operations_total{operation="read"}' in text
    assert "artstore_fuse_read_bytes_total 1.0" in text
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
