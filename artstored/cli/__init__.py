"""``artstore``: the command-line tool for operators and scripts.

Commands that talk to a daemon take ``--url`` and credentials (``--credentials FILE``, or
``ARTSTORE_CLIENT_ID``/``ARTSTORE_CLIENT_SECRET``, or ``~/.config/artstore/credentials.json``);
offline commands take ``--data-dir``. Every command has ``--json``. Exit status: 0 success,
1 the request failed (the problem's one-line summary on stderr), 2 usage or configuration,
3 the daemon could not be reached.
"""

from __future__ import annotations

import argparse
import sys

from . import (account_cmd, audit_cmd, cluster_cmd, config_cmd, element_cmd, export_cmd,
               files_cmd, fixity_cmd, job_cmd, keys_cmd, mount_cmd, offline_cmd, search_cmd,
               token_cmd)
from .common import EXIT_USAGE, run

COMMAND_MODULES = (token_cmd, files_cmd, search_cmd, element_cmd, job_cmd, account_cmd,
                   keys_cmd, audit_cmd, config_cmd, offline_cmd, mount_cmd, fixity_cmd,
                   export_cmd, cluster_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="artstore",
                                     description="ArtStore command-line tool.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
