"""The operator's documents: man pages lint clean and cover what the code offers."""

import glob
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(glob.glob(os.path.join(ROOT, "man", "*.[1-8]")))


def test_man_pages_lint_clean():
    assert PAGES
    for page in PAGES:
        result = subprocess.run(["mandoc", "-Tlint", "-W", "warning", page],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_mount_page_names_every_option():
    from artstored.cli import build_parser

    page = open(os.path.join(ROOT, "man", "artstore-mount.8")).read()
    mount = build_parser()._subparsers._group_actions[0].choices["mount"]
    for action in mount._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                assert f"Fl -{flag[2:]}" in page, flag
