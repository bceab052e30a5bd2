"""The FUSE tree without a mount: names, clashes, inodes, listings (real LMDB, real files)."""

import errno
import os

import pytest

from artstored.engine import Actor, ReadView, UploadRequest
from artstored.fuse.model import ARCHIVED_ERRNO, ArchiveModel, FsError
from artstored.fuse.names import display_name, file_ino, fit_name

ALICE = Actor("cl_alice", "alice", "user")



def put(store, name, data=b"x", **kw):
    return store.ingest([data], UploadRequest(name, **kw), ALICE)


def test_display_names():
    assert display_name("a/b/report.pdf") == "report.pdf"
    assert display_name("..") == "unnamed"
    assert display_name("bad\x00name\x07.txt") == "bad_name_.txt"
    long = display_name("я" * 300 + ".pdf")
    assert len(long.encode()) <= 255 and long.endswith(".pdf")
    assert fit_name("x" * 300 + ".pdf", " [abcd1234]").endswith(" [abcd1234].pdf")


def test_tree_and_clashes(store):
    a = put(store, "same.txt", b"first")
    b = put(store, "same.txt", b"second")
    c = put(store, "other file #1.txt", b"third")
    model = ArchiveModel(store.data_dir, view=ReadView.of_store(store))
    root = dict(model.readdir(1))
    assert set(root) == {"README", "by-date", "by-id", "search"}
    years = model.readdir(root["by-date"].ino)
    months = model.readdir(years[0][1].ino)
    days = model.readdir(months[0][1].ino)
    day = dict(model.readdir(days[0][1].ino))
    clash = f"same [{b['file_id'].replace('-', '')[-8:]}].txt"
    assert set(day) == {"same.txt", clash, "other file #1.txt"}
    # The oldest keeps the plain name; the same file has the same inode everywhere.
    assert day["same.txt"].ino == file_ino(a["file_id"])
    by_id = dict(model.readdir(root["by-id"].ino))
    assert by_id[a["file_id"] + ".txt"].ino == day["same.txt"].ino
    assert model.lookup(days[0][1].ino, clash).ino == file_ino(b["file_id"])
    assert model.lookup(root["by-id"].ino, c["file_id"] + ".txt").ino == file_ino(c["file_id"])
    with pytest.raises(FsError) as info:
        model.lookup(root["by-id"].ino, c["file_id"] + ".pdf")
    assert info.value.errno == errno.ENOENT
    node = model.lookup(days[0][1].ino, "same.txt")
    st = model.stat(node)
    assert st.size == 5 and st.nlink == 2 and st.mode & 0o777 == 0o444
    with open(model.content_path(node), "rb") as f:
        assert f.read() == b"first"
    xattrs = model.xattrs(node)
    assert xattrs["user.artstore.file_id"] == a["file_id"].encode()
    assert xattrs["user.artstore.sha256"] == a["checksum_sha256"].encode()
    model.close()


def test_inodes_are_stable_across_models(store):
    a = put(store, "stable.txt")
    first = ArchiveModel(store.data_dir, view=ReadView.of_store(store))
    second = ArchiveModel(store.data_dir, view=ReadView.of_store(store))
    assert dict(first.readdir(first.by_id.ino)) == dict(second.readdir(second.by_id.ino))
    assert first.by_date.ino == second.by_date.ino
    assert dict(first.readdir(first.by_id.ino))[a["file_id"] + ".txt"].ino == \
        file_ino(a["file_id"])
    first.close()
    second.close()


def test_new_files_show_without_reopening(store):
    model = ArchiveModel(store.data_dir, view=ReadView.of_store(store))
    assert model.readdir(model.by_id.ino) == []
    a = put(store, "late.txt")
    assert [n for n, _ in model.readdir(model.by_id.ino)] == [a["file_id"] + ".txt"]
    model.close()


def test_archived_content_is_offline(store):
    a = put(store, "old.txt")
    store.set_mode("ro", ALICE)
    store.set_mode("ar", ALICE)
    model = ArchiveModel(store.data_dir, view=ReadView.of_store(store))
    node = model.lookup(model.by_id.ino, a["file_id"] + ".txt")
    with pytest.raises(FsError) as info:
        model.content_path(node)
    assert info.value.errno == ARCHIVED_ERRNO == errno.ENOMEDIUM
    assert model.xattrs(node)["user.artstore.archived"] == b"yes"
    assert model.stat(node).size == 1  # metadata stays readable
    model.close()


def test_statfs_reports_capacity(store):
    put(store, "a.txt")
    model = ArchiveModel(store.data_dir, view=ReadView.of_store(store))
    info = model.statfs()
    st = os.statvfs(store.data_dir)
    assert info["files"] == 1
    assert info["total"] == st.f_blocks * st.f_frsize
    model.close()
