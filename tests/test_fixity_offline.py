"""Offline fixity (``artstore fixity verify``): a sidecar's signature and its data file's
digests checked from the files alone, on a real store, with no daemon and no LMDB."""

import base64
import hashlib
import json
import os
import subprocess

import nacl.signing
import pytest
import xxhash

from artstored.engine import Actor, UploadRequest
from artstored.engine import attrs as A
from artstored.engine import layout as L
from artstored.engine.node import b64url
from artstored.preservation import fixity as F
from harness import ARTSTORE

ACTOR = Actor("t", "t")
CONTENT = b"The quick brown fox jumps over the lazy dog.\n" * 1000


def _upload(store, content=CONTENT, name="a.txt", **kw) -> tuple[str, str]:
    """(sidecar path, data path) of a newly stored file."""
    attr = store.ingest([content], UploadRequest(name, **kw), ACTOR)
    data_path = store.content_path(store.get(attr["file_id"]))
    return data_path + L.ATTR_SUFFIX, data_path


def _key(store) -> F.PublicKey:
    return F.load_public_key(os.path.join(store.data_dir, "node.json"))


def _rewrite_attr(attr_path: str, **changes) -> None:
    with open(attr_path, "rb") as f:
        attr = A.decode(f.read())
    attr.update(changes)
    with open(attr_path, "wb") as f:
        f.write(A.encode(attr))


def _flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([ARTSTORE, *args], capture_output=True, text=True, timeout=60)


def test_an_intact_file_passes(store):
    attr_path, _ = _upload(store, description="first")
    r = F.check_sidecar(attr_path, _key(store))
    assert r["ok"] and r["data_ok"], r["problems"]
    assert (r["signature"], r["size"], r["sha256"], r["xxh3_128"], r["data"]) == \
        ("ok", "ok", "ok", "ok", "ok")
    assert r["key_id"] == r["expected_key_id"] == store.node.node_id
    assert r["problems"] == []


def test_the_key_is_found_above_the_sidecar_and_read_in_every_accepted_form(store, tmp_path):
    attr_path, _ = _upload(store)
    found = F.find_node_json(attr_path)
    assert found == os.path.join(store.data_dir, "node.json")
    public = bytes(store.node.key.verify_key)
    forms = {
        "raw.key": public,
        "b64url.txt": (b64url(public) + "\n").encode(),
        "b64.txt": base64.b64encode(public) + b"\n",
        "key.pem": b"-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(
            bytes.fromhex("302a300506032b6570032100") + public) + b"\n-----END PUBLIC KEY-----\n",
    }
    for name, data in forms.items():
        (tmp_path / name).write_bytes(data)
        key = F.load_public_key(str(tmp_path / name))
        assert key.node_id == store.node.node_id, name
        assert F.check_sidecar(attr_path, key)["ok"], name
    (tmp_path / "junk").write_bytes(b"not a key")
    with pytest.raises(F.KeyFileError):
        F.load_public_key(str(tmp_path / "junk"))
    assert F.find_node_json(str(tmp_path / "x.attr.json")) is None


def test_a_flipped_byte_in_the_data_file_is_caught(store):
    attr_path, data_path = _upload(store)
    _flip_byte(data_path, 1234)
    r = F.check_sidecar(attr_path, _key(store))
    assert not r["ok"] and not r["data_ok"]
    assert r["signature"] == "ok" and r["size"] == "ok"
    assert r["sha256"] == "mismatch" and r["xxh3_128"] == "mismatch"
    assert any("SHA-256" in p for p in r["problems"])


def test_a_flipped_byte_past_the_first_read_chunk_is_caught(store):
    content = os.urandom(F.CHUNK * 2 + 123)
    attr_path, data_path = _upload(store, content, "big.bin")
    assert F.check_sidecar(attr_path, _key(store))["ok"]
    _flip_byte(data_path, F.CHUNK * 2 + 100)
    r = F.check_sidecar(attr_path, _key(store))
    assert r["sha256"] == "mismatch" and r["size"] == "ok" and not r["ok"]
    assert r["actual"]["file_size"] == len(content)


def test_a_truncated_data_file_is_caught(store):
    attr_path, data_path = _upload(store)
    os.truncate(data_path, len(CONTENT) // 2)
    r = F.check_sidecar(attr_path, _key(store))
    assert not r["ok"]
    assert r["size"] == "mismatch" and r["sha256"] == "mismatch"
    assert any("truncated" in p for p in r["problems"])


def test_a_missing_data_file_and_a_damaged_sidecar_are_reported_not_raised(store, tmp_path):
    attr_path, data_path = _upload(store)
    os.unlink(data_path)
    r = F.check_sidecar(attr_path, _key(store))
    assert not r["ok"] and r["data"] == "missing" and r["signature"] == "ok"
    with open(attr_path, "wb") as f:
        f.write(b"{not json")
    r = F.check_sidecar(attr_path, _key(store))
    assert not r["ok"] and r["attr"] == "unreadable" and r["problems"]
    r = F.check_sidecar(str(tmp_path / "nothing.attr.json"), _key(store))
    assert not r["ok"] and r["attr"] == "missing" and r["data"] == "missing"


def test_editing_a_field_outside_the_signed_payload_keeps_the_signature(store):
    attr_path, _ = _upload(store, description="original")
    assert "description" not in A.fixity_payload({"description": "x"}).decode()
    _rewrite_attr(attr_path, description="edited by hand")
    r = F.check_sidecar(attr_path, _key(store))
    assert r["ok"], r["problems"]


def test_a_forged_checksum_and_size_in_the_sidecar_are_caught(store):
    """The attacker swaps the content and updates the sidecar to match: the digests agree
    with the edited record, the signature does not."""
    attr_path, data_path = _upload(store)
    forged = b"forged content"
    with open(data_path, "wb") as f:
        f.write(forged)
    _rewrite_attr(attr_path, file_size=len(forged),
                  checksum_sha256=hashlib.sha256(forged).hexdigest(),
                  xxh3_128=xxhash.xxh3_128(forged).hexdigest())
    r = F.check_sidecar(attr_path, _key(store))
    assert r["data_ok"]                 # the bytes match the (edited) record ...
    assert r["signature"] == "invalid"  # ... which the node never signed
    assert not r["ok"]
    assert any("INVALID signature" in p for p in r["problems"])


def test_a_signature_made_with_another_key_is_caught(store):
    attr_path, _ = _upload(store)
    other = nacl.signing.SigningKey.generate()
    with open(attr_path, "rb") as f:
        attr = A.decode(f.read())
    other_id = F.PublicKey(other.verify_key, "other").node_id
    attr["signature"] = {"alg": "Ed25519", "key_id": other_id,
                         "value": b64url(other.sign(A.fixity_payload(attr)).signature)}
    with open(attr_path, "wb") as f:
        f.write(A.encode(attr))
    r = F.check_sidecar(attr_path, _key(store))
    assert r["signature"] == "invalid" and not r["ok"]
    assert r["key_id"] == other_id != r["expected_key_id"]
    # ... and a signature under this node's key id made with another key, too.
    attr["signature"]["key_id"] = store.node.node_id
    with open(attr_path, "wb") as f:
        f.write(A.encode(attr))
    r = F.check_sidecar(attr_path, _key(store))
    assert r["signature"] == "invalid" and not r["ok"]
    # Checked with the other key, the signature is good but names the wrong key id.
    r = F.check_sidecar(attr_path, other.verify_key)
    assert r["signature"] == "ok" and not r["ok"]


def test_without_a_key_nothing_is_proven(store):
    attr_path, _ = _upload(store)
    r = F.check_sidecar(attr_path)
    assert r["signature"] == "unchecked" and r["data_ok"] and not r["ok"]


def test_the_cli_checks_files_offline(store, tmp_path):
    """``artstore fixity verify`` in another process, no daemon anywhere: exit 0 for good
    files, 1 naming the damaged one, 2 without a key."""
    good, _ = _upload(store, name="good.txt")
    bad, bad_data = _upload(store, name="bad.txt")
    store.close()     # nothing holds the store: the CLI reads files only
    r = _cli("fixity", "verify", good)
    assert r.returncode == 0, r.stderr
    assert "1 of 1 passed" in r.stdout
    r = _cli("fixity", "verify", good[: -len(L.ATTR_SUFFIX)])   # the data file's path
    assert r.returncode == 0, r.stderr
    _flip_byte(bad_data, 10)
    r = _cli("fixity", "verify", "--json", good, bad)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["checked"], doc["passed"], doc["ok"]) == (2, 1, False)
    assert [f["ok"] for f in doc["files"]] == [True, False]
    assert bad_data in r.stderr and "SHA-256" in r.stderr
    # An explicit key file, and a sidecar whose directories hold no node.json.
    copy = tmp_path / "elsewhere" / os.path.basename(good)
    copy.parent.mkdir()
    copy.write_bytes(open(good, "rb").read())
    with open(good[: -len(L.ATTR_SUFFIX)], "rb") as f:
        (tmp_path / "elsewhere" / os.path.basename(good[: -len(L.ATTR_SUFFIX)])).write_bytes(
            f.read())
    r = _cli("fixity", "verify", str(copy))
    assert r.returncode == 2 and "--pubkey" in r.stderr, r.stderr
    r = _cli("fixity", "verify", "--pubkey", os.path.join(store.data_dir, "node.json"),
             str(copy))
    assert r.returncode == 0, r.stderr
    (tmp_path / "junk.key").write_bytes(b"junk")
    r = _cli("fixity", "verify", "--pubkey", str(tmp_path / "junk.key"), str(copy))
    assert r.returncode == 2 and "junk.key" in r.stderr
