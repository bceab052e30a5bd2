"""Offline fixity: check one attr.json sidecar and its data file with nothing but the files.

No daemon, no LMDB: ``check_sidecar`` reads the sidecar, verifies its Ed25519 signature over
``attrs.fixity_payload`` with the node's public key, reads the data file once (the sidecar's
path minus ``.attr.json``) and compares its size, SHA-256 and XXH3-128 with the record. It
never raises for a damaged or missing file: it says what is wrong in its report.

The public key: ``load_public_key(FILE)`` accepts

- the node's ``node.json`` (``{"node_id", "algorithm": "Ed25519", "public_key": base64url}``,
  written by the daemon at the top of its data directory),
- a PEM ``PUBLIC KEY`` (SubjectPublicKeyInfo, as ``openssl pkey -pubout`` writes),
- the raw 32 bytes of the key,
- or those 32 bytes as base64 or base64url text (padding optional) on one line.

``find_node_json(PATH)`` looks for ``node.json`` in the directories above a sidecar, which
finds it in the default layout (``<data_dir>/disks/0/objects/YYYY/MM/DD/HH/...``) and in a
BagIt export of ArtStore (``metadata/node.json`` beside ``metadata/<id>.attr.json``, whose
payload file ``metadata/files.jsonl`` names); for disk roots outside the data directory the
caller names the key file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing
import xxhash

from ..engine import attrs as A
from ..engine import layout as L
from ..engine.errors import StoreCorrupt
from ..engine.node import b64url_decode

CHUNK = 4 * 1024 * 1024
NODE_JSON = "node.json"
# DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
# 1.3.101.112 }, BIT STRING { 32 bytes } }.
_SPKI_ED25519 = bytes.fromhex("302a300506032b6570032100")

OK, INVALID, MISSING, UNCHECKED, MISMATCH, ABSENT, UNREADABLE = (
    "ok", "invalid", "missing", "unchecked", "mismatch", "absent", "unreadable")


class KeyFileError(ValueError):
    """A public key file that cannot be read or is not a key in any accepted form."""


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key, where it came from, and the node id it stands for."""

    verify_key: nacl.signing.VerifyKey
    source: str

    @property
    def node_id(self) -> str:
        """The id a node with this key has (``NodeIdentity``: ``n-`` + 16 hex of SHA-256)."""
        return "n-" + hashlib.sha256(bytes(self.verify_key)).hexdigest()[:16]


def _key_from_bytes(raw: bytes, source: str) -> PublicKey:
    if len(raw) != 32:
        raise KeyFileError(f"{source}: an Ed25519 public key has 32 bytes, not {len(raw)}")
    return PublicKey(nacl.signing.VerifyKey(raw), source)


def _decode_b64(text: str) -> bytes | None:
    text = "".join(text.split())
    padded = text + "=" * (-len(text) % 4)
    for decode in (base64.urlsafe_b64decode, base64.b64decode):
        try:
            return decode(padded.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            continue
    return None


def load_public_key(path: str) -> PublicKey:
    """The key in ``path`` (node.json, PEM, raw 32 bytes or base64 text: see the module
    docstring); KeyFileError saying why not."""
    try:
        with open(path, "rb") as f:
            data = f.read(65536)
    except OSError as exc:
        raise KeyFileError(f"cannot read the public key file {path}: {exc.strerror}") from None
    if len(data) == 32:
        return _key_from_bytes(data, path)
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: neither node.json, a PEM public key, base64 text nor "
                           f"32 raw bytes ({len(data)} bytes of binary)") from None
    if text.startswith("{"):
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            raise KeyFileError(f"{path}: not valid JSON: {exc}") from None
        alg = doc.get("algorithm", "Ed25519")
        if alg != "Ed25519":
            raise KeyFileError(f"{path}: key algorithm {alg!r}; only Ed25519 is known")
        if not isinstance(doc.get("public_key"), str):
            raise KeyFileError(f"{path}: no \"public_key\" member (is this node.json?)")
        raw = _decode_b64(doc["public_key"])
        if raw is None:
            raise KeyFileError(f"{path}: \"public_key\" is not base64url")
        key = _key_from_bytes(raw, path)
        if doc.get("node_id") not in (None, key.node_id):
            raise KeyFileError(f"{path}: node_id {doc['node_id']!r} does not belong to its "
                               f"public key (that would be {key.node_id})")
        return key
    if text.startswith("-----BEGIN PUBLIC KEY-----"):
        body = text.removeprefix("-----BEGIN PUBLIC KEY-----").split("-----END", 1)[0]
        der = _decode_b64(body)
        if der is None or len(der) != 44 or not der.startswith(_SPKI_ED25519):
            raise KeyFileError(f"{path}: the PEM public key is not an Ed25519 key")
        return _key_from_bytes(der[len(_SPKI_ED25519):], path)
    raw = _decode_b64(text) if len(text) < 100 else None
    if raw is None or len(raw) != 32:
        raise KeyFileError(f"{path}: neither node.json, a PEM public key, base64 text of 32 "
                           "bytes nor 32 raw bytes")
    return _key_from_bytes(raw, path)


def find_node_json(attr_path: str) -> str | None:
    """The nearest ``node.json`` in a directory above ``attr_path``, or None."""
    cur = os.path.dirname(os.path.abspath(attr_path))
    while True:
        candidate = os.path.join(cur, NODE_JSON)
        if os.path.isfile(candidate):
            return candidate
        parent = os.path.dirname(cur)
        if parent == cur:
            return None
        cur = parent


def data_path_of(attr_path: str) -> str:
    """The data file of a sidecar: its path without ``.attr.json``; for a record in an
    ArtStore BagIt export (``<bag>/metadata/<file_id>.attr.json``), its payload file as
    ``metadata/files.jsonl`` names it."""
    if not attr_path.endswith(L.ATTR_SUFFIX):
        raise ValueError(f"{attr_path}: a sidecar's name ends in {L.ATTR_SUFFIX}")
    plain = attr_path[: -len(L.ATTR_SUFFIX)]
    if not os.path.exists(plain):
        in_bag = _bag_payload_path(attr_path)
        if in_bag is not None:
            return in_bag
    return plain


_BAG_INDEXES: dict[tuple[str, int], dict[str, str]] = {}


def _bag_payload_path(attr_path: str) -> str | None:
    meta = os.path.dirname(os.path.abspath(attr_path))
    index = os.path.join(meta, "files.jsonl")
    bag = os.path.dirname(meta)
    if os.path.basename(meta) != "metadata" or not os.path.isfile(
            os.path.join(bag, "bagit.txt")):
        return None
    try:
        key = (index, os.stat(index).st_mtime_ns)
        if key not in _BAG_INDEXES:
            paths = {}
            with open(index, encoding="utf-8") as f:
                for line in f:
                    row = json.loads(line)
                    paths[row["file_id"]] = row["path"]
            _BAG_INDEXES.clear()
            _BAG_INDEXES[key] = paths
        rel = _BAG_INDEXES[key].get(os.path.basename(attr_path)[: -len(L.ATTR_SUFFIX)])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not rel or os.path.isabs(rel) or ".." in rel.split("/"):
        return None
    return os.path.join(bag, *rel.split("/"))


def digest_file(path: str) -> tuple[int, str, str]:
    """(size, sha256 hex, xxh3_128 hex) of the file at ``path``, read once in 4 MiB
    chunks. Raises OSError."""
    sha, xxh = hashlib.sha256(), xxhash.xxh3_128()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except (AttributeError, OSError):
            pass
        while True:
            n = os.readv(fd, [buf])
            if n == 0:
                break
            chunk = view[:n]
            sha.update(chunk)
            xxh.update(chunk)
            size += n
    finally:
        view.release()
        os.close(fd)
    return size, sha.hexdigest(), xxh.hexdigest()


def check_sidecar(attr_path: str, public_key: PublicKey | nacl.signing.VerifyKey | bytes
                  | str | None = None, *, data_path: str | None = None) -> dict:
    """Check ``attr_path`` and its data file; never raises for what it finds.

    ``public_key``: a PublicKey, a VerifyKey, the 32 raw bytes, or base64url text. Without
    one the signature is ``unchecked`` and ``ok`` is False (nothing was proven about the
    record); ``data_ok`` still says whether the bytes match it. ``data_path``: the data
    file, if it is not the sidecar's path minus ``.attr.json`` (a bag's payload file).

    The report::

        attr_path, data_path, file_id (None if the sidecar is unreadable)
        attr        ok | missing | unreadable (not JSON, or required fields missing)
        signature   ok | invalid | missing | unchecked     (over attrs.fixity_payload)
        key_id      the signature's key_id;  expected_key_id  the given key's node id
        data        ok | missing | unreadable
        size, sha256, xxh3_128   ok | mismatch | absent (the record has no such field)
                                  | None (not checked: no record or no data)
        expected / actual        {file_size, checksum_sha256, xxh3_128}
        data_ok     the data file matches the record (size and both digests)
        ok          everything above passed, the signature included
        problems    one line per problem
    """
    if data_path is None:
        try:
            data_path = data_path_of(attr_path)
        except ValueError:
            data_path = None
    report: dict = {
        "attr_path": attr_path, "data_path": data_path, "file_id": None,
        "attr": OK, "signature": UNCHECKED, "key_id": None, "expected_key_id": None,
        "data": None, "size": None, "sha256": None, "xxh3_128": None,
        "expected": {}, "actual": {}, "data_ok": False, "ok": False, "problems": [],
    }
    problems: list[str] = report["problems"]

    # --- the record ---------------------------------------------------------------------------
    attr = None
    if data_path is None:
        report["attr"] = UNREADABLE
        problems.append(f"{attr_path}: not a sidecar (the name does not end in "
                        f"{L.ATTR_SUFFIX})")
    else:
        try:
            with open(attr_path, "rb") as f:
                raw = f.read(1 << 20)  # ≤ 4 KiB when written; never more than 1 MiB
            attr = A.decode(raw, source=attr_path)
        except FileNotFoundError:
            report["attr"] = MISSING
            problems.append(f"{attr_path}: no such sidecar")
        except OSError as exc:
            report["attr"] = UNREADABLE
            problems.append(f"{attr_path}: cannot read: {exc.strerror}")
        except StoreCorrupt as exc:
            report["attr"] = UNREADABLE
            problems.append(exc.detail)
    if attr is not None:
        report["file_id"] = attr.get("file_id")
        report["expected"] = {"file_size": attr.get("file_size"),
                              "checksum_sha256": attr.get("checksum_sha256"),
                              "xxh3_128": attr.get("xxh3_128")}
        _check_signature(attr, public_key, report)

    # --- the data file ------------------------------------------------------------------------
    if data_path is not None:
        try:
            size, sha, xxh = digest_file(data_path)
        except FileNotFoundError:
            report["data"] = MISSING
            problems.append(f"{data_path}: the data file is missing")
        except OSError as exc:
            report["data"] = UNREADABLE
            problems.append(f"{data_path}: cannot read the data file: {exc.strerror}")
        else:
            report["data"] = OK
            report["actual"] = {"file_size": size, "checksum_sha256": sha, "xxh3_128": xxh}
            if attr is not None:
                _compare(report, data_path)

    report["data_ok"] = (report["data"] == OK and report["attr"] == OK
                         and report["size"] == OK and report["sha256"] == OK
                         and report["xxh3_128"] in (OK, ABSENT))
    report["ok"] = report["data_ok"] and report["signature"] == OK and not problems
    return report


def _as_verify_key(public_key) -> PublicKey | None:
    if public_key is None or isinstance(public_key, PublicKey):
        return public_key
    if isinstance(public_key, nacl.signing.VerifyKey):
        return PublicKey(public_key, "given")
    if isinstance(public_key, str):
        public_key = b64url_decode(public_key.strip())
    return _key_from_bytes(bytes(public_key), "given")


def _check_signature(attr: dict, public_key, report: dict) -> None:
    problems = report["problems"]
    try:
        key = _as_verify_key(public_key)
    except (KeyFileError, ValueError, TypeError, binascii.Error) as exc:
        report["signature"] = UNCHECKED
        problems.append(f"the public key given is not usable: {exc}")
        return
    sig = attr.get("signature")
    if isinstance(sig, dict):
        report["key_id"] = sig.get("key_id")
    if key is not None:
        report["expected_key_id"] = key.node_id
    if not isinstance(sig, dict) or not sig.get("value"):
        report["signature"] = MISSING
        problems.append(f"{report['attr_path']}: the record is not signed")
        return
    if sig.get("alg", "Ed25519") != "Ed25519":
        report["signature"] = INVALID
        problems.append(f"{report['attr_path']}: signature algorithm {sig.get('alg')!r} is "
                        "not Ed25519")
        return
    if key is None:
        report["signature"] = UNCHECKED
        problems.append(f"{report['attr_path']}: signature not checked (no public key)")
        return
    try:
        key.verify_key.verify(A.fixity_payload(attr), b64url_decode(str(sig["value"])))
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError, binascii.Error):
        report["signature"] = INVALID
        if sig.get("key_id") and sig.get("key_id") != key.node_id:
            problems.append(
                f"{report['attr_path']}: INVALID signature: made by key {sig.get('key_id')} "
                f"(origin node {attr.get('origin_node')}), checked with {key.node_id}; "
                "if the file came from another node, give that node's node.json")
        else:
            problems.append(
                f"{report['attr_path']}: INVALID signature: the signed fields (file_id, "
                "file_size, checksum_sha256, created_at, origin_node) were changed after "
                "signing, or the signature is forged")
        return
    report["signature"] = OK
    if sig.get("key_id") != key.node_id:
        problems.append(f"{report['attr_path']}: the signature verifies but its key_id "
                        f"{sig.get('key_id')!r} is not the key's id {key.node_id}")


def _compare(report: dict, data_path: str) -> None:
    exp, act, problems = report["expected"], report["actual"], report["problems"]
    try:
        expected_size = int(exp["file_size"])
    except (TypeError, ValueError):
        expected_size = None
    if expected_size == act["file_size"]:
        report["size"] = OK
    else:
        report["size"] = MISMATCH
        problems.append(f"{data_path}: size {act['file_size']} bytes, the record says "
                        f"{exp['file_size']}"
                        + (" (truncated)" if expected_size is not None
                           and act["file_size"] < expected_size else ""))
    if str(exp["checksum_sha256"] or "").lower() == act["checksum_sha256"]:
        report["sha256"] = OK
    else:
        report["sha256"] = MISMATCH
        problems.append(f"{data_path}: SHA-256 {act['checksum_sha256']}, the record says "
                        f"{exp['checksum_sha256']}")
    if not exp.get("xxh3_128"):
        report["xxh3_128"] = ABSENT
    elif str(exp["xxh3_128"]).lower() == act["xxh3_128"]:
        report["xxh3_128"] = OK
    else:
        report["xxh3_128"] = MISMATCH
        problems.append(f"{data_path}: XXH3-128 {act['xxh3_128']}, the record says "
                        f"{exp['xxh3_128']}")
