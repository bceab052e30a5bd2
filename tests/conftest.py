import os

import pytest

from harness import Daemon


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
