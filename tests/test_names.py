"""Unicode and hostile filenames: a safe name on disk, the original kept and returned."""

import json
import os
import urllib.parse

import pytest

from harness import objects_files

NAMES = [
    "Годовой отчёт 2024.pdf",
    "報告書_最終版.docx",
    "émoji 📄 file.txt",
    "../../etc/passwd",
    "a/b/c.txt",
    "..",
    "name\x00with\x00nul.txt",
    "ctl\x01\x1f\x7f\u202eevil.txt",
    "line\r\nbreak.txt",
    "-rf .txt",
    ".hidden",
    "x" * 300 + ".pdf",
    "я" * 150 + ".txt",  # 300 bytes of UTF-8 before the extension
    'quote"back\\slash%20.txt',
]


def _storage_files(data_dir, file_id):
    return [p for p in objects_files(data_dir) if file_id in p]


@pytest.mark.parametrize("name", NAMES, ids=range(len(NAMES)))
def test_hostile_names(api, shared_daemon, name):
    attr = api.upload_ok(b"content", name)
    assert attr["original_filename"] == name
    stored = attr["storage_filename"]
    raw = stored.encode("utf-8")
    assert len(raw) <= 200
    assert "/" not in stored and "\x00" not in stored and not stored.startswith((".", "-"))
    assert all(ord(c) >= 0x20 and c not in "\x7f\u202e\r\n" for c in stored)
    assert attr["file_id"] in stored
    # On disk: exactly the data file and its sidecar, inside objects/YYYY/MM/DD/HH/.
    files = _storage_files(shared_daemon.data_dir, attr["file_id"])
    assert sorted(os.path.basename(f) for f in files) == [stored, stored + ".attr.json"]
    for f in files:
        parts = f.split("/")
        assert parts[1] == "objects" and len(parts) == 7, f
    sidecar = os.path.join(shared_daemon.data_dir, "disks",
                           [f for f in files if f.endswith(".attr.json")][0])
    with open(sidecar, encoding="utf-8") as fh:
        assert json.load(fh)["original_filename"] == name
    # The download carries the exact original name.
    r = api.download(attr["file_id"])
    disposition = r.headers["content-disposition"]
    encoded = disposition.split("filename*=UTF-8''", 1)[1]
    assert urllib.parse.unquote(encoded) == name
    fallback = disposition.split('filename="', 1)[1].split('"', 1)[0]
    assert all(0x20 <= ord(c) < 0x7F for c in fallback)


def test_long_name_keeps_extension(api):
    attr = api.upload_ok(b"c", "x" * 300 + ".pdf")
    assert attr["storage_filename"].endswith(".pdf")
    assert len(attr["storage_filename"].encode()) == 200


def test_missing_or_empty_filename_refused(api):
    r = api.upload(b"c", None)
    assert r.status == 422 and r.problem["code"] == "invalid_filename"
    r = api.upload(b"c", "")
    assert r.status == 422 and r.problem["code"] == "invalid_filename"


def test_overlong_original_name_refused(api):
    r = api.upload(b"c", "y" * 2000)
    assert r.status == 422 and r.problem["code"] == "invalid_filename"
