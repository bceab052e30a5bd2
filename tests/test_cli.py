"""The ``artstore`` command against a real daemon: every command, --json, exit codes."""

import hashlib
import json
import os

import pytest


@pytest.fixture
def cli(shared_daemon):
    creds = os.path.join(shared_daemon.data_dir, "initial-admin.json")

    def run(*args, check_ok=True):
        result = shared_daemon.cli(*args, "--credentials", creds)
        if check_ok:
            assert result.returncode == 0, (args, result.stderr.decode())
        return result
    return run


def test_upload_info_download_patch(cli, tmp_path):
    src = tmp_path / "Отчёт 2024.txt"
    src.write_bytes(b"annual numbers\n" * 1000)
    out = cli("upload", str(src), "--description", "annual", "--attr", "dept=finance",
              "--attr", "year=2024", "--json")
    attr = json.loads(out.stdout)
    assert attr["original_filename"] == "Отчёт 2024.txt"
    assert attr["custom_attributes"] == {"dept": "finance", "year": "2024"}
    assert attr["content_type"] == "text/plain"

    info = json.loads(cli("info", attr["file_id"], "--json").stdout)
    assert info == attr
    human = cli("info", attr["file_id"]).stdout.decode()
    assert "original_filename: Отчёт 2024.txt" in human

    dest = tmp_path / "copy.txt"
    got = json.loads(cli("download", attr["file_id"], "-o", str(dest), "--json").stdout)
    assert dest.read_bytes() == src.read_bytes()
    assert got["checksum_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    piped = cli("download", attr["file_id"], "-o", "-")
    assert piped.stdout == src.read_bytes()

    patched = json.loads(cli("patch", attr["file_id"], "--description", "revised",
                             "--unset-attr", "year", "--json").stdout)
    assert patched["version"] == 2 and patched["custom_attributes"] == {"dept": "finance"}


def test_ls_walks_all_pages(cli, tmp_path):
    ids = []
    for i in range(5):
        f = tmp_path / f"ls-{i}.txt"
        f.write_text(str(i))
        ids.append(json.loads(cli("upload", str(f), "--json").stdout)["file_id"])
    listed = json.loads(cli("ls", "--all", "--limit", "2", "--order", "asc",
                            "--json").stdout)
    got = [a["file_id"] for a in listed["items"]]
    assert [i for i in got if i in ids] == ids and listed["next_cursor"] is None
    human = cli("ls", "--limit", "3").stdout.decode().splitlines()
    assert len(human) == 3


def test_token_and_element(cli):
    token = cli("token").stdout.decode().strip()
    assert token.count(".") == 2
    element = json.loads(cli("element", "--json").stdout)
    assert element["mode"] == "rw" and "capacity" in element
    assert "mode      rw" in cli("element").stdout.decode()


def test_errors_are_one_line_and_nonzero(cli, shared_daemon, tmp_path):
    r = cli("info", "01a20691-6899-722d-be62-aaef65c3d7f4", check_ok=False)
    assert r.returncode == 1
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "file_not_found" in lines[0] and "HTTP 404" in lines[0]
    r = cli("info", "01a20691-6899-722d-be62-aaef65c3d7f4", "--json", check_ok=False)
    assert r.returncode == 1 and json.loads(r.stdout)["code"] == "file_not_found"
    r = cli("mode", "ar", check_ok=False)
    assert r.returncode == 1 and "transition_not_allowed" in r.stderr.decode()
    r = cli("upload", str(tmp_path / "missing.txt"), check_ok=False)
    assert r.returncode == 2
    r = cli("patch", "01a20691-6899-722d-be62-aaef65c3d7f4", check_ok=False)
    assert r.returncode == 2 and "nothing to change" in r.stderr.decode()
    bad = shared_daemon.cli("ls", "--url", "http://127.0.0.1:9", "--credentials",
                            os.path.join(shared_daemon.data_dir, "initial-admin.json"))
    assert bad.returncode == 3
    nocreds = shared_daemon.cli("ls", env={"HOME": str(tmp_path)})
    assert nocreds.returncode == 1 and "no_credentials" in nocreds.stderr.decode()


def test_env_credentials(shared_daemon):
    creds = shared_daemon.admin_credentials()
    r = shared_daemon.cli("ls", "--json", env={"ARTSTORE_CLIENT_ID": creds["client_id"],
                                               "ARTSTORE_CLIENT_SECRET": creds["client_secret"]})
    assert r.returncode == 0, r.stderr


def test_checksum_is_declared_by_default(cli, tmp_path):
    f = tmp_path / "sum.bin"
    f.write_bytes(os.urandom(1000))
    attr = json.loads(cli("upload", str(f), "--json").stdout)
    assert attr["checksum_sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()


def test_rm_in_edit_mode(make_daemon, tmp_path):
    d = make_daemon("edit-cli", config={"element": {"initial_mode": "edit"}})
    creds = os.path.join(d.data_dir, "initial-admin.json")
    f = tmp_path / "gone.txt"
    f.write_text("bye")
    attr = json.loads(d.cli("upload", str(f), "--json", "--credentials", creds).stdout)
    r = d.cli("rm", attr["file_id"], "--credentials", creds)
    assert r.returncode == 0 and b"deleted" in r.stdout
    r = d.cli("info", attr["file_id"], "--credentials", creds)
    assert r.returncode == 1


def test_offline_rebuild_refuses_a_running_store(shared_daemon):
    r = shared_daemon.cli("rebuild", "--data-dir", shared_daemon.data_dir)
    assert r.returncode == 1 and "store_locked" in r.stderr.decode()


def test_help_lists_every_command():
    from artstored.cli import build_parser

    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    assert commands >= {"token", "upload", "download", "ls", "info", "patch", "rm", "element",
                        "mode", "rebuild"}
