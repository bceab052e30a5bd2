"""Configuration: defaults ← TOML file ← ``ARTSTORE_*`` environment ← command-line flags.

Every key is declared once in ``KEYS`` with its type, default and a line of help; the man
page and the example file are checked against this table. ``ARTSTORE_<SECTION>_<KEY>``
overrides ``[section] key``; ``ARTSTORE_CONFIG``, ``ARTSTORE_DATA_DIR`` and
``ARTSTORE_LISTEN`` are the short forms of the three things everyone sets. With no file and
no variables the result is the embedded default: a single node with the admin role, data in
``./artstore-data``, listening on ``127.0.0.1:8470``.

``load`` raises ConfigError naming the key and where its bad value came from.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass

DEFAULT_CONFIG_PATH = "/etc/artstore/artstored.toml"

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000 ** 2, "G": 1000 ** 3, "T": 1000 ** 4,
          "KI": 1024, "MI": 1024 ** 2, "GI": 1024 ** 3, "TI": 1024 ** 4}


class ConfigError(Exception):
    """A configuration value is invalid; the message names the key and its source."""


@dataclass(frozen=True)
class Key:
    section: str
    name: str
    kind: str          # str | int | bytes | bool | float | list | choice
    default: object
    help: str
    choices: tuple = ()
    minimum: float | None = None

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env(self) -> str:
        return f"ARTSTORE_{self.section.upper()}_{self.name.upper()}"


KEYS: tuple[Key, ...] = (
    Key("server", "listen", "str", "127.0.0.1:8470", "HOST:PORT the HTTP API listens on"),
    Key("server", "shutdown_grace_seconds", "float", 30.0,
        "on SIGTERM, how long in-flight requests may take to finish", minimum=0),
    Key("server", "client_max_fields_bytes", "bytes", 64 * 1024,
        "largest non-file multipart field accepted", minimum=1024),
    Key("storage", "data_dir", "str", "./artstore-data",
        "data directory: store.lmdb, index, keys, default disk root"),
    Key("storage", "disks", "list", [],
        "disk roots for objects (default: <data_dir>/disks/0); a new file goes to the root "
        "with the most free space"),
    Key("storage", "sync_method", "choice", "syncfs",
        "how a group commit flushes its batch: one syncfs() per filesystem, or an fsync "
        "per file and directory", choices=("syncfs", "fsync")),
    Key("storage", "max_batch", "int", 256, "most uploads committed in one group commit",
        minimum=1),
    Key("storage", "lmdb_map_size", "bytes", 1 << 40,
        "largest the LMDB store may grow (address space only; the file grows as used)",
        minimum=1 << 20),
    Key("storage", "wal_segment_records", "int", 100_000,
        "WAL records sealed into one segment file beside the data; LMDB keeps fewer than "
        "twice this many", minimum=100),
    Key("limits", "max_upload_bytes", "bytes", 16 * 1024 ** 3,
        "largest file accepted; larger uploads get 413 while streaming", minimum=1),
    Key("element", "initial_mode", "choice", "rw",
        "mode of a new element (edit is for life; later changes go through the API)",
        choices=("edit", "rw", "ro", "ar")),
    Key("element", "name", "str", "", "a name for this node (default: the host name)"),
    Key("auth", "token_ttl_seconds", "int", 1800, "lifetime of access tokens", minimum=60),
    Key("auth", "secret_ttl_days", "int", 90, "lifetime of client secrets", minimum=1),
    Key("auth", "failure_audit_seconds", "float", 60.0,
        "failed sign-ins are audited in aggregate, one WAL record per this many seconds",
        minimum=0.1),
    Key("auth", "issuer", "str", "", "the iss claim of tokens (default: artstore:<node id>)"),
    Key("scrub", "rate_mb_per_s", "float", 50.0,
        "how fast a scrub may read stored files, in MB/s (0: as fast as the disks go)",
        minimum=0),
    Key("scrub", "concurrency", "int", 2, "files a scrub hashes at once", minimum=1),
    Key("scrub", "interval_days_rw", "float", 90.0,
        "a full scrub pass this often while the element is rw or edit (0: only on demand)",
        minimum=0),
    Key("scrub", "interval_days_ro", "float", 180.0,
        "a full scrub pass this often while the element is ro (0: only on demand)", minimum=0),
    Key("scrub", "interval_days_ar", "float", 365.0,
        "a full scrub pass this often while the element is ar (0: only on demand)", minimum=0),
    Key("export", "directory", "str", "",
        "where export jobs write BagIt bags (default: <data_dir>/exports)"),
    Key("retention", "gc_interval_seconds", "float", 3600.0,
        "how often expired temporary files are collected (0: never)", minimum=0),
    Key("cluster", "enabled", "bool", False,
        "take part in a cluster (implied by seeds); off: the embedded single node"),
    Key("cluster", "seeds", "list", [],
        "HOST:PORT of cluster members to ask to join through (ARTSTORE_CLUSTER_SEEDS takes "
        "them comma-separated); an admin with none starts a new cluster"),
    Key("cluster", "advertise", "str", "",
        "HOST:PORT peers use to reach this node (default: server.listen)"),
    Key("cluster", "role", "choice", "admin",
        "admin: signs the cluster document (roster, modes, tokens); member: applies it",
        choices=("admin", "member")),
    Key("cluster", "replication_factor", "int", 2,
        "copies of each file the cluster keeps (a new cluster's policy)", minimum=1),
    Key("cluster", "authority", "choice", "local",
        "where the admin state lives: local (the one admin node's disk) or etcd (any admin "
        "node may sign, etcd's leases decide which; survives the loss of a host)",
        choices=("local", "etcd")),
    Key("cluster", "etcd_endpoints", "list", [],
        "HOST:PORT of the etcd members holding the admin state (authority = etcd)"),
    Key("cluster", "admin_key", "str", "",
        "the admin's node public key (base64url, from `artstore cluster status` on the "
        "admin): a new node accepts a first cluster document only from it (default: from "
        "whoever its seeds name)"),
    Key("replication", "ack", "choice", "quorum",
        "in a cluster, when an upload is answered: local (durable here), quorum (on a "
        "majority of its owners) or all (on every owner); ?ack= overrides it per request",
        choices=("local", "quorum", "all")),
    Key("replication", "ack_timeout_seconds", "float", 30.0,
        "how long an upload waits for its copies before it is answered 503 (the file stays "
        "stored here and is replicated later)", minimum=1),
    Key("replication", "repair_interval_seconds", "float", 3600.0,
        "how often a full anti-entropy pass checks that every owner of each file held here "
        "has it (also soon after any roster change, and on request)", minimum=1),
    Key("replication", "tombstone_days", "float", 30.0,
        "a deleted file's tombstone is forgotten after this many days, and only once every "
        "roster member confirms it holds no copy", minimum=0),
    Key("s3", "listen", "str", "",
        "HOST:PORT of the S3-compatible endpoint (path-style requests, Signature Version 4 "
        "with keys from `artstore account s3-key create`); empty: no S3 endpoint"),
    Key("s3", "region", "str", "us-east-1",
        "the region S3 clients sign for (their configured region must name it)"),
    Key("uploads", "abandoned_days", "float", 7.0,
        "an S3 multipart upload or a native upload session untouched this long is aborted "
        "and its bytes removed", minimum=0.001),
    Key("log", "level", "choice", "info", "log level",
        choices=("debug", "info", "warning", "error")),
    Key("log", "file", "str", "", "append JSON log lines to this file instead of stderr "
        "(SIGHUP reopens it)"),
)

SHORT_ENV = {"ARTSTORE_DATA_DIR": "storage.data_dir", "ARTSTORE_LISTEN": "server.listen"}


def parse_bytes(value) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a size")
    if isinstance(value, int):
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"expected a size such as 1048576, 512MiB or 16GiB, not {value!r}")
    unit = (m.group(2) or "").upper().rstrip("B")
    return int(m.group(1)) * _UNITS[unit]


def _convert(key: Key, value, from_text: bool):
    kind = key.kind
    if kind in ("str", "choice"):
        if not isinstance(value, str):
            raise ValueError(f"expected a string, not {type(value).__name__}")
        if kind == "choice" and value not in key.choices:
            raise ValueError(f"expected one of {', '.join(key.choices)}, not {value!r}")
        return value
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if from_text and str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if from_text and str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, not {value!r}")
    if kind == "list":
        if from_text and isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("expected a list of strings")
        return value
    if kind == "bytes":
        out = parse_bytes(value)
    elif kind == "int":
        if isinstance(value, bool) or not (isinstance(value, int) or from_text):
            raise ValueError(f"expected an integer, not {value!r}")
        out = int(value)
    elif kind == "float":
        if isinstance(value, bool) or not (isinstance(value, (int, float)) or from_text):
            raise ValueError(f"expected a number, not {value!r}")
        out = float(value)
    else:
        raise AssertionError(kind)
    if key.minimum is not None and out < key.minimum:
        raise ValueError(f"must be at least {key.minimum:g}")
    return out


class Config:
    """The effective configuration: ``config["storage.data_dir"]``, or attribute-style
    ``config.storage_data_dir``; ``source(key)`` says where each value came from."""

    def __init__(self, values: dict, sources: dict):
        self._values = values
        self._sources = sources

    def __getitem__(self, dotted: str):
        return self._values[dotted]

    def source(self, dotted: str) -> str:
        return self._sources[dotted]

    def items(self):
        return [(k.dotted, self._values[k.dotted], self._sources[k.dotted]) for k in KEYS]

    # Shortcuts for what nearly everyone reads.
    @property
    def data_dir(self) -> str:
        return os.path.abspath(self["storage.data_dir"])

    @property
    def listen(self) -> tuple[str, int]:
        return parse_listen(self["server.listen"])


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def example_toml() -> str:
    """The commented example configuration: every key, its default, what it does, and its
    environment variable. ``etc/artstored.toml.example`` is this text (a test keeps it so)."""
    lines = ["# /etc/artstore/artstored.toml: configuration of artstored and artstore mount.",
             "# Every key is optional; shown here with its default. Every key can also be set",
             "# with an environment variable, which wins over this file. See artstore.toml(5).",
             ""]
    section = None
    for key in KEYS:
        if key.section != section:
            if section is not None:
                lines.append("")
            lines.append(f"[{key.section}]")
            section = key.section
        choices = f" One of: {', '.join(key.choices)}." if key.choices else ""
        lines.append(f"# {key.help[0].upper()}{key.help[1:]}.{choices} ({key.env})")
        lines.append(f"# {key.name} = {_toml_value(key.default)}")
    return "\n".join(lines) + "\n"


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def load(path: str | None = None, *, env: dict | None = None,
         overrides: dict | None = None) -> Config:
    """The effective configuration. ``path`` None: ``ARTSTORE_CONFIG``, else
    /etc/artstore/artstored.toml if it exists, else none. ``overrides`` (from flags) win."""
    env = os.environ if env is None else env
    keys = {k.dotted: k for k in KEYS}
    values = {k.dotted: k.default for k in KEYS}
    sources = {k.dotted: "default" for k in KEYS}

    path = path or env.get("ARTSTORE_CONFIG")
    if path is None and os.path.exists(DEFAULT_CONFIG_PATH):
        path = DEFAULT_CONFIG_PATH
    if path:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        for section, table in doc.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: {section!r} must be a [section]")
            for name, value in table.items():
                dotted = f"{section}.{name}"
                if dotted not in keys:
                    raise ConfigError(f"{path}: unknown key {dotted}")
                try:
                    values[dotted] = _convert(keys[dotted], value, from_text=False)
                except ValueError as exc:
                    raise ConfigError(f"{path}: {dotted}: {exc}") from None
                sources[dotted] = path

    for var, dotted in list(SHORT_ENV.items()) + [(k.env, k.dotted) for k in KEYS]:
        if var in env:
            try:
                values[dotted] = _convert(keys[dotted], env[var], from_text=True)
            except ValueError as exc:
                raise ConfigError(f"environment {var} ({dotted}): {exc}") from None
            sources[dotted] = f"env {var}"

    for dotted, (value, origin) in (overrides or {}).items():
        try:
            values[dotted] = _convert(keys[dotted], value, from_text=True)
        except ValueError as exc:
            raise ConfigError(f"{origin} ({dotted}): {exc}") from None
        sources[dotted] = origin

    for dotted in ("server.listen", "s3.listen"):
        try:
            if values[dotted] or dotted == "server.listen":
                parse_listen(values[dotted])
        except ValueError as exc:
            raise ConfigError(f"{sources[dotted]}: {dotted}: {exc}") from None
    return Config(values, sources)
