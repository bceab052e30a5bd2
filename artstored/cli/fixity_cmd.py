"""``artstore fixity verify PATH.attr.json ...``: check sidecars and their data files offline.

No daemon and no LMDB: the sidecar's signature is checked with the node's public key and
the data file (the sidecar's path minus ``.attr.json``) is re-hashed (size, SHA-256,
XXH3-128). ``--pubkey FILE`` takes the node's ``node.json``, a PEM public key, the raw 32
bytes or their base64; without it ``node.json`` is looked for in the directories above each
sidecar (it is at the top of the data directory). The records of a bag written by
``artstore export --bagit`` (``metadata/<id>.attr.json``) are checked against their payload
files, with the bag's ``metadata/node.json``. Exit 0 if every file passed, 1 if any
check failed (one line per problem on stderr), 2 if no key could be found.
"""

from __future__ import annotations

import os
import sys

from ..engine import layout as L
from ..preservation import fixity as F
from .common import EXIT_FAILED, EXIT_OK, UsageError, add_json_option, emit


def _key_for(path: str, args, cache: dict) -> F.PublicKey:
    if args.pubkey:
        key_file = args.pubkey
    else:
        key_file = F.find_node_json(path)
        if key_file is None:
            raise UsageError(
                f"no {F.NODE_JSON} found in the directories above {path} (the disk root is "
                "outside the data directory?): pass --pubkey <data_dir>/node.json, or a file "
                "with the node's Ed25519 public key")
    key_file = os.path.abspath(key_file)
    if key_file not in cache:
        try:
            cache[key_file] = F.load_public_key(key_file)
        except F.KeyFileError as exc:
            raise UsageError(str(exc)) from None
    return cache[key_file]


def _text(result: dict) -> str:
    lines = []
    for r in result["files"]:
        state = "OK    " if r["ok"] else "FAILED"
        lines.append(f"{state}  {r['attr_path']}  {r['file_id'] or '-'}  signature "
                     f"{r['signature']}, data {r['data'] or '-'}")
    lines.append(f"{result['passed']} of {result['checked']} passed")
    return "\n".join(lines)


def cmd_verify(args) -> int:
    cache: dict[str, F.PublicKey] = {}
    # A data file's path stands for its sidecar.
    paths = [p + L.ATTR_SUFFIX if not p.endswith(L.ATTR_SUFFIX)
             and os.path.isfile(p + L.ATTR_SUFFIX) else p for p in args.paths]
    keys = [_key_for(path, args, cache) for path in paths]  # exit 2 before any work
    results = []
    for path, key in zip(paths, keys):
        report = F.check_sidecar(path, key)
        report["key_file"] = key.source
        results.append(report)
    passed = sum(1 for r in results if r["ok"])
    for r in results:
        for problem in r["problems"]:
            print(f"artstore: {problem}", file=sys.stderr)
    emit(args, {"ok": passed == len(results), "checked": len(results), "passed": passed,
                "files": results}, _text)
    return EXIT_OK if passed == len(results) else EXIT_FAILED


def register(sub) -> None:
    p = sub.add_parser("fixity", help="offline fixity checks of stored files (no daemon)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser(
        "verify", help="check attr.json sidecars (signature) and their data files (size, "
                       "SHA-256, XXH3-128) offline; exit 1 if any check fails")
    add_json_option(a)
    a.add_argument("paths", nargs="+", metavar="PATH.attr.json",
                   help="sidecars (or their data files); each data file is the path "
                        "without .attr.json")
    a.add_argument("--pubkey", metavar="FILE",
                   help="the node's public key: its node.json, a PEM public key, the raw "
                        "32 bytes or their base64 (default: node.json in a directory above "
                        "each sidecar)")
    a.set_defaults(func=cmd_verify)
