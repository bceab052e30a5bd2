"""``artstore upload | download | ls | info | patch | rm``."""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import sys
import tempfile
import urllib.parse

from . import resume
from .common import UsageError, add_remote_options, emit, make_client, progress_bar


def _sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _parse_attrs(pairs: list[str] | None, as_json: str | None) -> dict | None:
    attrs = {}
    if as_json:
        try:
            attrs = json.loads(as_json)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--attrs-json is not valid JSON: {exc}") from None
        if not isinstance(attrs, dict):
            raise UsageError("--attrs-json must be a JSON object")
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--attr takes KEY=VALUE, not {pair!r}")
        attrs[key] = value
    return attrs or None


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _file_line(attr: dict) -> str:
    return (f"{attr['file_id']}  {_size(attr['file_size']):>10}  {attr['created_at'][:19]}  "
            f"{attr['original_filename']}")


# --- upload ---------------------------------------------------------------------------------

def _session_fields(fields: dict, filename: str, content_type: str) -> dict:
    """An upload's form fields as an upload session's JSON."""
    out = {"original_filename": filename, "content_type": content_type}
    for name, value in fields.items():
        if value is None:
            continue
        if name == "custom_attributes":
            value = json.loads(value)
        elif name == "ttl_days":
            value = int(value)
        out[name] = value
    return out


def cmd_upload(args) -> int:
    client = make_client(args)
    results = []
    for path in args.paths:
        if not os.path.isfile(path):
            raise UsageError(f"{path}: not a file")
        fields = {
            "description": args.description,
            "custom_attributes": json.dumps(_parse_attrs(args.attr, args.attrs_json))
            if (args.attr or args.attrs_json) else None,
            "retention_policy": args.retention,
            "ttl_days": str(args.ttl_days) if args.ttl_days is not None else None,
            "sha256": None if args.no_checksum else _sha256_of(path),
        }
        ctype = args.content_type or mimetypes.guess_type(path)[0] or \
            "application/octet-stream"
        update, close = progress_bar(os.path.getsize(path), os.path.basename(path),
                                     not args.json)
        try:
            if args.resumable or os.path.getsize(path) >= resume.RESUMABLE_BYTES:
                attr = resume.upload(client, path, _session_fields(
                    fields, args.name or os.path.basename(path), ctype), progress=update)
            else:
                attr = client.upload(path, filename=args.name or os.path.basename(path),
                                     fields=fields, content_type=ctype, progress=update)
        finally:
            close()
        results.append(attr)
        if not args.json:
            print(_file_line(attr))
    if args.json:
        emit(args, results[0] if len(results) == 1 else results)
    return 0


# --- download -------------------------------------------------------------------------------

class _HashingWriter:
    def __init__(self, f):
        self.f = f
        self.sha256 = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        self.f.write(chunk)


def cmd_download(args) -> int:
    client = make_client(args)
    attr = client.request("GET", f"/api/v1/files/{urllib.parse.quote(args.file_id)}")
    if args.output == "-":
        client.download(args.file_id, sys.stdout.buffer)
        return 0
    out_path = args.output or os.path.basename(attr["storage_filename"])
    if os.path.isdir(out_path):
        out_path = os.path.join(out_path, os.path.basename(attr["storage_filename"]))
    update, close = progress_bar(attr["file_size"], attr["original_filename"], not args.json)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(out_path)),
                               prefix=".artstore-download-")
    try:
        with os.fdopen(fd, "wb") as f:
            out = _HashingWriter(f)
            client.download(args.file_id, out, progress=update)
        if out.sha256.hexdigest() != attr["checksum_sha256"]:
            raise UsageError(f"downloaded content hashes to {out.sha256.hexdigest()}, the "
                             f"record says {attr['checksum_sha256']}: not saved")
        os.replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        close()
    emit(args, {"file_id": args.file_id, "path": out_path, "bytes": attr["file_size"],
                "checksum_sha256": attr["checksum_sha256"]},
         lambda d: f"{d['path']}  ({_size(d['bytes'])}, sha256 verified)")
    return 0


# --- ls / info ------------------------------------------------------------------------------

def cmd_ls(args) -> int:
    client = make_client(args)
    items, cursor = [], args.cursor
    while True:
        query = {"limit": str(args.limit), "order": args.order}
        if cursor:
            query["cursor"] = cursor
        page = client.request("GET", "/api/v1/files?" + urllib.parse.urlencode(query))
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if not args.all or not cursor:
            break
    emit(args, {"items": items, "next_cursor": cursor},
         lambda d: "\n".join(_file_line(a) for a in d["items"]))
    return 0


def cmd_info(args) -> int:
    client = make_client(args)
    attr = client.request("GET", f"/api/v1/files/{urllib.parse.quote(args.file_id)}")
    emit(args, attr, lambda a: "\n".join(f"{k}: {json.dumps(v, ensure_ascii=False)}"
                                         if isinstance(v, (dict, list)) else f"{k}: {v}"
                                         for k, v in a.items()))
    return 0


# --- patch / rm -----------------------------------------------------------------------------

def cmd_patch(args) -> int:
    client = make_client(args)
    if args.merge_patch:
        try:
            patch = json.loads(args.merge_patch)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--merge-patch is not valid JSON: {exc}") from None
    else:
        patch = {}
        if args.description is not None:
            patch["description"] = args.description
        attrs = _parse_attrs(args.attr, None) or {}
        for key in args.unset_attr or ():
            attrs[key] = None
        if attrs:
            patch["custom_attributes"] = attrs
    if not patch:
        raise UsageError("nothing to change: give --description, --attr, --unset-attr "
                         "or --merge-patch")
    attr = client.request("PATCH", f"/api/v1/files/{urllib.parse.quote(args.file_id)}",
                          body=json.dumps(patch).encode(),
                          headers={"Content-Type": "application/merge-patch+json"})
    emit(args, attr, lambda a: f"{a['file_id']} now at version {a['version']}")
    return 0


def cmd_rm(args) -> int:
    client = make_client(args)
    for file_id in args.file_ids:
        client.request("DELETE", f"/api/v1/files/{urllib.parse.quote(file_id)}")
    emit(args, {"deleted": args.file_ids}, lambda d: "\n".join(f"deleted {i}"
                                                               for i in d["deleted"]))
    return 0


def register(sub) -> None:
    p = sub.add_parser("upload", help="upload files")
    add_remote_options(p)
    p.add_argument("paths", nargs="+", metavar="FILE")
    p.add_argument("--name", help="original filename to record (default: the file's name)")
    p.add_argument("--description", help="a description, up to 1000 characters")
    p.add_argument("--attr", action="append", metavar="KEY=VALUE",
                   help="a custom attribute (repeatable)")
    p.add_argument("--attrs-json", metavar="JSON", help="custom attributes as a JSON object")
    p.add_argument("--retention", choices=("permanent", "temporary"),
                   help="permanent (default on rw) or temporary (the only kind on edit)")
    p.add_argument("--ttl-days", type=int, help="days a temporary file is kept (1-365)")
    p.add_argument("--content-type", help="default: guessed from the name")
    p.add_argument("--no-checksum", action="store_true",
                   help="do not hash the file first and declare its SHA-256")
    p.add_argument("--resumable", action="store_true",
                   help="upload through a resumable session even below 64 MiB (always at "
                        "or above it): a dropped connection resumes, and running the same "
                        "command again after an interruption continues where it stopped")
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("download", help="download a file (verifies its SHA-256)")
    add_remote_options(p)
    p.add_argument("file_id")
    p.add_argument("-o", "--output", help="file or directory to write; - for stdout")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("ls", help="list files, newest first")
    add_remote_options(p)
    p.add_argument("--limit", type=int, default=100, help="files per page (1-1000)")
    p.add_argument("--cursor", help="continue from a previous page's next_cursor")
    p.add_argument("--order", choices=("desc", "asc"), default="desc",
                   help="newest first (desc, default) or oldest first")
    p.add_argument("--all", action="store_true", help="follow cursors to the end")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("info", help="show a file's metadata")
    add_remote_options(p)
    p.add_argument("file_id")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("patch", help="change a file's description or custom attributes")
    add_remote_options(p)
    p.add_argument("file_id")
    p.add_argument("--description", help="the new description")
    p.add_argument("--attr", action="append", metavar="KEY=VALUE",
                   help="set a custom attribute (repeatable)")
    p.add_argument("--unset-attr", action="append", metavar="KEY",
                   help="remove a custom attribute (repeatable)")
    p.add_argument("--merge-patch", metavar="JSON", help="a raw RFC 7396 merge patch")
    p.set_defaults(func=cmd_patch)

    p = sub.add_parser("rm", help="delete files (edit elements only)")
    add_remote_options(p)
    p.add_argument("file_ids", nargs="+", metavar="FILE_ID")
    p.set_defaults(func=cmd_rm)
