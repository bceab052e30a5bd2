import pytest

from artstored.engine import Store, StoreConfig
from harness import DAEMON_LOGS, ISSUED_SECRETS, SUMMARY, Daemon


@pytest.fixture
def store(tmp_path):
    """A real Store (engine only: real LMDB, real files) in a temporary directory."""
    s = Store(StoreConfig(data_dir=str(tmp_path / "data")))
    yield s
    s.close()


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log():
    """After the whole run: grep everything every daemon logged for every secret and token
    the tests were given. Fails the run (as a teardown error) if one is found."""
    yield
    leaks = []
    for path in sorted(DAEMON_LOGS):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            continue
        leaks += [(path, s[:12] + "...") for s in ISSUED_SECRETS if s and s in text]
    assert not leaks, f"secrets or tokens in daemon logs: {leaks[:5]}"


@pytest.fixture
def make_daemon(tmp_path):
    """Start daemons with their own data directories; all are stopped after the test."""
    started: list[Daemon] = []

    def make(name: str = "node", **kw) -> Daemon:
        d = Daemon(str(tmp_path / name), **kw)
        started.append(d)
        return d.start()

    yield make
    for d in started:
        d.kill()


@pytest.fixture
def daemon(make_daemon) -> Daemon:
    return make_daemon()


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory):
    """One daemon for a module of tests that do not change its mode."""
    d = Daemon(str(tmp_path_factory.mktemp("shared") / "node")).start()
    yield d
    d.kill()


@pytest.fixture
def api(shared_daemon):
    return shared_daemon.api()


def pytest_terminal_summary(terminalreporter):
    """What the durability tests checked, printed even when they pass."""
    if SUMMARY:
        terminalreporter.section("what was checked")
        for line in SUMMARY:
            terminalreporter.write_line(line)
