"""BagIt export (``artstore export --bagit``): bags of a real store that the Library of
Congress validator (bagit.py) accepts, and that it rejects once a byte is flipped; nothing
overwritten, and no bag that carries damaged bytes."""

import glob
import json
import os
import subprocess
import sys

import pytest

from artstored.engine import Actor, ReadView, UploadRequest
from artstored.engine.errors import ChecksumMismatch, Conflict, ModeNotAllowed, StoreCorrupt
from artstored.preservation import export as X
from artstored.preservation import fixity as F
from harness import ARTSTORE, BIN

ACTOR = Actor("t", "t")
BAGIT = os.path.join(BIN, "bagit.py")


def _upload(store, content: bytes, name: str, **kw) -> dict:
    return store.ingest([content], UploadRequest(name, **kw), ACTOR)


def _validate(bag: str) -> subprocess.CompletedProcess:
    cmd = [BAGIT] if os.path.exists(BAGIT) else [sys.executable, "-m", "bagit"]
    return subprocess.run(cmd + ["--validate", bag], capture_output=True, text=True,
                          timeout=120)


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([ARTSTORE, *args], capture_output=True, text=True, timeout=120)


def _flip_byte(path: str, offset: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def _tree(path: str) -> dict:
    out = {}
    for root, dirs, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            out[os.path.relpath(p, path)] = open(p, "rb").read()
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), path) + "/"] = None
    return out


def _index(store) -> None:
    """Build the search index the daemon would keep (offline, as ``artstore reindex``)."""
    from artstored.index.follower import IndexFollower

    follower = IndexFollower(store, os.path.join(store.data_dir, "index"))
    try:
        follower.reindex()
    finally:
        follower.stop()


def test_a_query_export_beside_the_open_store_validates_and_a_flipped_byte_fails(
        store, tmp_path):
    """The store stays open (its lock held, as by a running daemon) while the CLI, in
    another process, reads it read-only and writes the bag."""
    a = _upload(store, b"first annual report\n" * 100, "report.txt",
                description="annual report 2024")
    b = _upload(store, b"second annual report\n" * 50, "Report.TXT",
                description="annual report 2025")
    c = _upload(store, b"a third one\n", "reports/report.txt", description="annual summary")
    _upload(store, b"not selected\n", "other.txt", description="minutes of a meeting")
    _index(store)
    bag = str(tmp_path / "bag")
    r = _cli("export", "--data-dir", store.data_dir, "--bagit", bag, "--query", "annual",
             "--organization", "Example Archive", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert (report["files"], report["skipped"]) == (3, [])
    assert report["bytes"] == sum(x["file_size"] for x in (a, b, c))
    # report.txt and Report.TXT clash on a case-insensitive filesystem: the later one is
    # renamed after its id; reports/report.txt becomes reports_report.txt.
    assert [x["file_id"] for x in report["renamed"]] == [b["file_id"]]
    tag = b["file_id"].replace("-", "")[-8:]
    assert sorted(os.listdir(os.path.join(bag, "data"))) == \
        sorted(["report.txt", f"Report [{tag}].TXT", "reports_report.txt"])
    assert open(os.path.join(bag, "data", "report.txt"), "rb").read() == \
        b"first annual report\n" * 100

    v = _validate(bag)
    assert v.returncode == 0, v.stderr
    info = open(os.path.join(bag, "bag-info.txt"), encoding="utf-8").read()
    assert f"Payload-Oxum: {report['bytes']}.3" in info
    assert "Bagging-Date: " in info and "Source-Organization: Example Archive" in info
    assert store.node.node_id in info and "annual" in info
    assert not [n for n in os.listdir(tmp_path) if "in-progress" in n]
    assert not os.path.exists(os.path.join(bag, X.IN_PROGRESS))

    # Tag files: each record and the key that signs it; they still prove the payload.
    meta = os.path.join(bag, "metadata")
    assert sorted(os.listdir(meta)) == sorted(
        [f"{x['file_id']}.attr.json" for x in (a, b, c)] + ["node.json", "files.jsonl"])
    rows = [json.loads(line) for line in open(os.path.join(meta, "files.jsonl"))]
    for row in rows:
        sidecar = os.path.join(meta, row["file_id"] + ".attr.json")
        key = F.load_public_key(F.find_node_json(sidecar))
        check = F.check_sidecar(sidecar, key)   # finds its payload file in the bag
        assert check["ok"], check["problems"]
        assert check["data_path"] == os.path.join(bag, row["path"])
    r = _cli("fixity", "verify", *glob.glob(os.path.join(meta, "*.attr.json")))
    assert r.returncode == 0 and "3 of 3 passed" in r.stdout, r.stderr

    _flip_byte(os.path.join(bag, "data", f"Report [{tag}].TXT"), 7)
    v = _validate(bag)
    assert v.returncode != 0
    assert "Report" in v.stderr


def test_all_files_by_default_and_file_ids_as_a_selection(store, tmp_path):
    big = os.urandom(9 * 1024 * 1024 + 7)     # more than two copy chunks
    a = _upload(store, big, "big.bin")
    b = _upload(store, b"two", "two.txt")
    store.close()
    r = _cli("export", "--data-dir", store.data_dir, "--bagit", str(tmp_path / "all"))
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "all" / "data")) == ["big.bin", "two.txt"]
    assert (tmp_path / "all" / "data" / "big.bin").read_bytes() == big
    assert a["file_size"] == len(big)
    assert _validate(str(tmp_path / "all")).returncode == 0
    missing = "01234567-89ab-7def-8123-456789abcdef"
    r = _cli("export", "--data-dir", store.data_dir, "--bagit", str(tmp_path / "some"),
             "--file-id", b["file_id"], "--file-id", missing, "--file-id", b["file_id"],
             "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["files"] == 1
    assert [s["file_id"] for s in report["skipped"]] == [missing, b["file_id"]]
    assert missing in r.stderr
    assert os.listdir(tmp_path / "some" / "data") == ["two.txt"]
    assert _validate(str(tmp_path / "some")).returncode == 0


def test_a_non_empty_destination_is_refused_and_left_unchanged(store, tmp_path):
    _upload(store, b"content", "a.txt")
    dest = tmp_path / "full"
    dest.mkdir()
    (dest / "keep.txt").write_bytes(b"precious")
    (dest / "data").mkdir()
    (dest / "data" / "a.txt").write_bytes(b"older")
    before = _tree(str(dest))
    view = ReadView.of_store(store)
    with pytest.raises(Conflict):
        X.export_bag(view, view.entries(), str(dest), source="test")
    assert _tree(str(dest)) == before
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"x")
    with pytest.raises(Conflict):
        X.export_bag(view, view.entries(), str(a_file), source="test")
    assert a_file.read_bytes() == b"x"
    r = _cli("export", "--data-dir", store.data_dir, "--bagit", str(dest))
    assert r.returncode == 2 and "not an empty directory" in r.stderr
    assert _tree(str(dest)) == before
    assert sorted(os.listdir(tmp_path)) == ["a-file", "data", "full"]

    # An existing empty directory (a mount point, say) is filled in place.
    empty = tmp_path / "empty"
    empty.mkdir()
    X.export_bag(view, view.entries(), str(empty), source="test")
    assert _validate(str(empty)).returncode == 0


def test_a_damaged_stored_file_aborts_the_export_naming_it(store, tmp_path):
    _upload(store, b"fine\n" * 100, "fine.txt")
    bad = _upload(store, b"will be damaged\n" * 100, "damaged.txt")
    _upload(store, b"after\n", "after.txt")
    _flip_byte(store.content_path(store.get(bad["file_id"])), 3)
    view = ReadView.of_store(store)
    dest = tmp_path / "bag"
    with pytest.raises(ChecksumMismatch) as caught:
        X.export_bag(view, view.entries(), str(dest), source="test")
    assert bad["file_id"] in caught.value.detail and "damaged.txt" in caught.value.detail
    assert not dest.exists()
    assert sorted(os.listdir(tmp_path)) == ["data"]     # no half-written bag anywhere
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ChecksumMismatch):
        X.export_bag(view, view.entries(), str(empty), source="test")
    assert os.listdir(empty) == []
    r = _cli("export", "--data-dir", store.data_dir, "--bagit", str(dest))
    assert r.returncode == 1
    assert bad["file_id"] in r.stderr and "damaged" in r.stderr
    assert not dest.exists()


def test_a_missing_data_file_aborts_too(store, tmp_path):
    gone = _upload(store, b"soon gone", "gone.txt")
    os.unlink(store.content_path(store.get(gone["file_id"])))
    view = ReadView.of_store(store)
    with pytest.raises(StoreCorrupt) as caught:
        X.export_bag(view, view.entries(), str(tmp_path / "bag"), source="test")
    assert gone["file_id"] in caught.value.detail
    assert not (tmp_path / "bag").exists()


def test_cancelling_removes_what_was_written(store, tmp_path):
    for i in range(3):
        _upload(store, b"x" * (i + 1), f"f{i}.txt")
    view = ReadView.of_store(store)
    done = []
    with pytest.raises(X.ExportCancelled):
        X.export_bag(view, view.entries(), str(tmp_path / "bag"), source="test",
                     progress=lambda files, nbytes: done.append((files, nbytes)),
                     cancelled=lambda: len(done) >= 2)
    assert done == [(1, 1), (2, 3)]
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_an_archived_element_has_no_content_to_export(store, tmp_path):
    _upload(store, b"x", "x.txt")
    store.set_mode("ro", ACTOR)
    store.set_mode("ar", ACTOR)
    view = ReadView.of_store(store)
    with pytest.raises(ModeNotAllowed):
        X.export_bag(view, view.entries(), str(tmp_path / "bag"), source="test")
    assert not (tmp_path / "bag").exists()


@pytest.mark.parametrize("original, expected", [
    ("report.pdf", "report.pdf"),
    ("../../etc/passwd", "etc_passwd"),
    ("C:\\Users\\me\\notes.txt", "C_Users_me_notes.txt"),
    (".bashrc", "bashrc"),
    ("-rf", "rf"),
    ("100% done.txt", "100_ done.txt"),
    ("a%0Ab.txt", "a_0Ab.txt"),
    ("line\nbreak.txt", "line_break.txt"),
    ("trailing dots...", "trailing dots"),
    ("  spaced  ", "spaced"),
    ("nbsp\u00a0", "nbsp"),
    ("CON.txt", "CON_.txt"),
    ("nul", "nul_"),
    ("\u202eevil.txt", "evil.txt"),
    ("...", "file"),
    ("", "file"),
    ("日本語の文書.pdf", "日本語の文書.pdf"),
])
def test_payload_names_are_safe(original, expected):
    assert X.safe_payload_name(original) == expected


def test_long_names_keep_their_extension_and_clashes_stay_unique():
    name = X.safe_payload_name("é" * 300 + ".pdf")
    assert name.endswith(".pdf") and len(name.encode()) <= 255
    names = X.PayloadNames()
    ids = [f"01a21da2-0000-7000-8000-{i:012x}" for i in range(4)]
    got = [names.assign("é" * 300 + ".pdf", i)[0] for i in ids]
    assert len({n.casefold() for n in got}) == 4
    assert all(len(n.encode()) <= 255 and n.endswith(".pdf") for n in got)
    assert got[1].endswith(" [00000001].pdf")


def test_hostile_names_make_a_valid_bag(store, tmp_path):
    for i, name in enumerate(["a%0Ab.txt", "line\nbreak.txt", "  lead", "tail  ", "x\u00a0",
                              "../up.txt", "up.txt", "UP.TXT", "日本語.txt", "\u202eevil"]):
        _upload(store, f"content {i}".encode(), name)
    view = ReadView.of_store(store)
    report = X.export_bag(view, view.entries(), str(tmp_path / "bag"), source="test")
    assert report["files"] == 10 and len(report["renamed"]) == 2
    v = _validate(str(tmp_path / "bag"))
    assert v.returncode == 0, v.stderr
