"""The operator's documents: man pages lint clean and cover what the code offers."""

import glob
import os
import re
import shlex
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
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


# --- the systemd unit's sandbox against the documented paths -------------------------------

UNIT = os.path.join(ROOT, "systemd", "artstored.service")


def unit_assignments(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file or drop-in, in order (systemd's syntax:
    ``#``/``;`` comments, ``[Section]`` headers, backslash continuations)."""
    out, section, pending = [], "", ""
    for raw in text.splitlines():
        line = (pending + " " + raw.strip()) if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1].strip()
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {line!r}"
        out.append((section, key.strip(), value.strip()))
    return out


_TRUE = {"yes", "true", "on", "1"}
# Same path named twice: systemd's namespace.c keeps the mount of the higher priority
# (inaccessible, then bind mounts such as StateDirectory=, then read-only, then read-write).
_PRIORITY = {"inaccessible": 0, "bind-rw": 1, "private": 1, "read-only": 2, "read-write": 3}


def sandbox_rules(assignments) -> list[tuple[str, str]]:
    """The [Service] file-system settings as (path, access) rules, per systemd.exec(5)."""
    settings: dict[str, str] = {}
    lists = {"ReadWritePaths": [], "ReadOnlyPaths": [], "InaccessiblePaths": []}
    exec_dirs = {"StateDirectory": "/var/lib", "CacheDirectory": "/var/cache",
                 "LogsDirectory": "/var/log", "RuntimeDirectory": "/run"}
    dirs: list[str] = []
    for section, key, value in assignments:
        if section != "Service":
            continue
        if key in lists:
            if not value:
                lists[key].clear()  # an empty assignment resets the list
            for word in shlex.split(value):
                # "-": ignored if missing; "+": relative to RootDirectory= (none here).
                lists[key].append(word.lstrip("-+"))
        elif key in exec_dirs:
            if not value:
                dirs.clear()
            dirs += [os.path.join(exec_dirs[key], w.split(":")[0]) for w in value.split()]
        else:
            settings[key] = value
    rules: list[tuple[str, str]] = []
    system = settings.get("ProtectSystem", "no").lower()
    if system == "strict":
        rules.append(("/", "read-only"))
    elif system == "full":
        rules += [(p, "read-only") for p in ("/usr", "/boot", "/efi", "/etc")]
    elif system in _TRUE:
        rules += [(p, "read-only") for p in ("/usr", "/boot", "/efi")]
    home = settings.get("ProtectHome", "no").lower()
    home_access = {"read-only": "read-only", "tmpfs": "private"}.get(
        home, "inaccessible" if home in _TRUE else None)
    if home_access:
        rules += [(p, home_access) for p in ("/home", "/root", "/run/user")]
    if settings.get("PrivateTmp", "no").lower() in _TRUE:
        rules += [("/tmp", "private"), ("/var/tmp", "private")]
    rules += [(p, "bind-rw") for p in dirs]
    rules += [(p, "read-write") for p in lists["ReadWritePaths"]]
    rules += [(p, "read-only") for p in lists["ReadOnlyPaths"]]
    rules += [(p, "inaccessible") for p in lists["InaccessiblePaths"]]
    return rules


def access(rules, path: str) -> str:
    """What the service may do at ``path``: the rule of the deepest covering path wins
    (mounts on sub-paths go on top), and without one the host's own access stands."""
    path = os.path.normpath(path)
    covering = [(os.path.normpath(p), a) for p, a in rules
                if os.path.commonpath([path, os.path.normpath(p)]) == os.path.normpath(p)]
    if not covering:
        return "read-write"
    deepest = max(len(p) for p, _ in covering)
    best = min((a for p, a in covering if len(p) == deepest), key=_PRIORITY.__getitem__)
    return "read-write" if best == "bind-rw" else best


def writable(rules, path: str) -> bool:
    return access(rules, path) == "read-write"


def documented_storage_paths() -> dict[str, str]:
    """Every absolute data directory and disk root that the man pages, the example
    configuration, the installed configuration and the unit itself show: path -> where."""
    import tomllib

    sources = PAGES + [os.path.join(ROOT, "etc", "artstored.toml.example"),
                       os.path.join(ROOT, "scripts", "install-system.sh")]
    found: dict[str, str] = {}
    for source in sources:
        text = open(source).read()
        where = os.path.relpath(source, ROOT)
        for line in text.splitlines():
            line = re.sub(r"^#\s*", "", line.strip())  # the example has them commented out
            if re.match(r"(data_dir|disks)\s*=", line):
                value = tomllib.loads(line)
                for path in value.get("disks", []) + [value.get("data_dir", "")]:
                    if path.startswith("/"):
                        found.setdefault(path, where)
        for path in re.findall(r"--data-dir\s+(/\S+)", text):
            found.setdefault(path, where)
    for _, key, value in unit_assignments(open(UNIT).read()):
        if key == "Environment" and value.startswith("ARTSTORE_DATA_DIR="):
            found.setdefault(value.split("=", 1)[1], "systemd/artstored.service")
    return found


def man_drop_in() -> str:
    """The drop-in that artstored(8) shows for a disk root elsewhere."""
    page = open(os.path.join(ROOT, "man", "artstored.8")).read()
    blocks = re.findall(r"^\.Bd -literal[^\n]*\n(.*?)^\.Ed$", page, flags=re.M | re.S)
    drop_ins = [b for b in blocks if "ReadWritePaths=" in b]
    assert len(drop_ins) == 1, "artstored(8) shows one ReadWritePaths= drop-in"
    return drop_ins[0]


def test_sandbox_model_follows_systemd():
    """The model the next tests rely on, on units whose outcome systemd.exec(5) states."""
    strict = sandbox_rules(unit_assignments(
        "[Service]\nProtectSystem=strict\nReadWritePaths=-/srv /data/a\nStateDirectory=x\n"
        "ReadOnlyPaths=/srv/ro\nProtectHome=yes\nPrivateTmp=yes\n"))
    assert writable(strict, "/srv/disk1/artstore") and writable(strict, "/data/a/b")
    assert writable(strict, "/var/lib/x/store.lmdb")
    assert not writable(strict, "/srv/ro/x") and not writable(strict, "/var/lib/other")
    assert not writable(strict, "/opt/x") and not writable(strict, "/data")
    assert access(strict, "/home/u") == "inaccessible" and access(strict, "/tmp") == "private"
    full = sandbox_rules(unit_assignments("[Service]\nProtectSystem=full\n"))
    assert writable(full, "/srv/x") and writable(full, "/var/lib/x")
    assert not writable(full, "/etc/artstore") and not writable(full, "/usr/local")
    yes = sandbox_rules(unit_assignments("[Service]\nProtectSystem=yes\n"))
    assert writable(yes, "/etc/x") and not writable(yes, "/boot/x")
    reset = sandbox_rules(unit_assignments(
        "[Service]\nProtectSystem=strict\nReadWritePaths=/srv\nReadWritePaths=\n"))
    assert not writable(reset, "/srv/x")


def test_unit_lets_the_service_write_every_documented_data_dir_and_disk_root():
    rules = sandbox_rules(unit_assignments(open(UNIT).read()))
    paths = documented_storage_paths()
    # What the pages show, so that this test cannot pass by finding nothing.
    assert {"/var/lib/artstore", "/srv/disk1/artstore", "/srv/disk2/artstore"} <= set(paths)
    refused = {p: (where, access(rules, p)) for p, where in paths.items()
               if not writable(rules, p)}
    assert not refused, f"documented storage paths the installed service cannot write: {refused}"
    # ...and the sandbox still protects the system: this is not passed by switching it off.
    for path in ("/usr/local/bin", "/etc/artstore", "/boot"):
        assert not writable(rules, path), path
    assert access(rules, "/home/someone") == "inaccessible"


def test_man_page_drop_in_opens_a_disk_root_elsewhere():
    unit = open(UNIT).read()
    drop_in = man_drop_in()
    added = unit_assignments(drop_in)
    targets = [w.lstrip("-+") for s, k, v in added if (s, k) == ("Service", "ReadWritePaths")
               for w in shlex.split(v)]
    assert targets, drop_in
    before = sandbox_rules(unit_assignments(unit))
    after = sandbox_rules(unit_assignments(unit + "\n" + drop_in))
    for path in targets:
        assert not writable(before, path), f"{path} is not 'elsewhere': pick another example"
        assert writable(after, path), path
    # RequiresMountsFor= belongs in [Unit]: in [Service] systemd would ignore it.
    mounts = [v for s, k, v in added if k == "RequiresMountsFor"]
    assert mounts and all(s == "Unit" for s, k, _ in added if k == "RequiresMountsFor")
    # The unit with the drop-in applied still verifies.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "artstored.service")
        with open(path, "w") as f:
            f.write((unit + "\n" + drop_in).replace("/usr/local/bin/", BIN + "/"))
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", path],
                           capture_output=True, text=True, cwd=tmp)
        assert r.returncode == 0, r.stdout + r.stderr
