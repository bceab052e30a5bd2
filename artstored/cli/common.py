"""What every ``artstore`` command shares: options, credentials, output, and the one place
errors become a line on stderr and an exit status."""

from __future__ import annotations

import json
import os
import sys

from ..engine.errors import ArtStoreError
from .client import ApiError, Client, ConnectError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_URL = "http://127.0.0.1:8470"
PROFILE = os.path.expanduser("~/.config/artstore/credentials.json")


class UsageError(Exception):
    """The command line or the local set-up is wrong (exit 2)."""


def add_json_option(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def add_remote_options(parser) -> None:
    add_json_option(parser)
    parser.add_argument("--url", default=os.environ.get("ARTSTORE_URL", DEFAULT_URL),
                        help=f"daemon URL (default: $ARTSTORE_URL or {DEFAULT_URL})")
    parser.add_argument("--credentials", metavar="FILE",
                        help='JSON file with "client_id" and "client_secret" (such as '
                             "initial-admin.json)")


def _load_credentials(path: str) -> tuple[str, str]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        return doc["client_id"], doc["client_secret"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"cannot read credentials from {path}: {exc}") from None


def make_client(args) -> Client:
    if args.credentials:
        client_id, secret = _load_credentials(args.credentials)
    elif os.environ.get("ARTSTORE_CLIENT_ID"):
        client_id = os.environ["ARTSTORE_CLIENT_ID"]
        secret = os.environ.get("ARTSTORE_CLIENT_SECRET", "")
    elif os.path.exists(PROFILE):
        client_id, secret = _load_credentials(PROFILE)
    else:
        client_id = secret = None
    try:
        return Client(args.url, client_id=client_id, client_secret=secret)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def load_config(args):
    """The configuration for a command with ``--config`` and ``--data-dir`` options;
    UsageError (exit 2) naming the bad key."""
    from .. import config as C

    overrides = {"storage.data_dir": (args.data_dir, "flag --data-dir")} \
        if getattr(args, "data_dir", None) else {}
    try:
        return C.load(getattr(args, "config", None), overrides=overrides)
    except C.ConfigError as exc:
        raise UsageError(str(exc)) from None


def emit(args, data, human=None) -> None:
    """Print ``data`` as JSON with --json, else ``human(data)`` (or JSON if none)."""
    if args.json or human is None:
        print(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        text = human(data)
        if text:
            print(text)


def progress_bar(total: int, label: str, enabled: bool):
    """A tqdm bar on a terminal for large transfers; a no-op callback otherwise."""
    if not enabled or total < 8 * 1024 * 1024 or not sys.stderr.isatty():
        return None, (lambda: None)
    from tqdm import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
               file=sys.stderr, leave=False)
    return bar.update, bar.close


def run(args) -> int:
    try:
        return args.func(args) or EXIT_OK
    except ApiError as exc:
        code = exc.code
        print(f"artstore: {exc} ({code}, HTTP {exc.status})", file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps(exc.problem, ensure_ascii=False, indent=2))
        return EXIT_FAILED
    except ConnectError as exc:
        print(f"artstore: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except UsageError as exc:
        print(f"artstore: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ArtStoreError as exc:  # offline commands
        print(f"artstore: {exc.detail} ({exc.code})", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("artstore: interrupted", file=sys.stderr)
        return 130
