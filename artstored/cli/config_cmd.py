"""``artstore config show|example``: the effective configuration and where each value came
from; the commented example file."""

from __future__ import annotations

from .. import config as C
from .common import add_json_option, emit, load_config


def cmd_show(args) -> int:
    cfg = load_config(args)
    rows = [{"key": k, "value": v, "source": s} for k, v, s in cfg.items()]
    emit(args, {"items": rows}, lambda d: "\n".join(
        f"{r['key']:<36} = {C._toml_value(r['value']):<28}  # {r['source']}"
        for r in d["items"]))
    return 0


def cmd_example(args) -> int:
    print(C.example_toml(), end="")
    return 0


def register(sub) -> None:
    p = sub.add_parser("config", help="show the effective configuration")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("show", help="every key, its value and where it came from")
    add_json_option(a)
    a.add_argument("--config", help="config file (default: $ARTSTORE_CONFIG, else "
                   f"{C.DEFAULT_CONFIG_PATH} if it exists)")
    a.add_argument("--data-dir", help="as artstored --data-dir")
    a.set_defaults(func=cmd_show)
    a = actions.add_parser("example", help="print the commented example configuration")
    a.set_defaults(func=cmd_example)
