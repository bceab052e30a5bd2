# ArtStore. `make run` and `make test` each do every set-up step on a fresh Debian machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test bench bench-quick bench-crash system-deps install-system clean

system-deps:
	./scripts/install-system-deps.sh

$(STAMP): pyproject.toml scripts/install-system-deps.sh
	./scripts/install-system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

# The embedded default: single node, admin role, data in ./artstore-data, 127.0.0.1:8470.
run: install
	$(BIN)/artstored

# The tests, then every benchmark at a tiny size (about 2.5 minutes) so the suite never rots.
test: install
	$(BIN)/pytest -q tests
	$(BIN)/python -m bench.run_all --quick

# The whole suite against the machine's limits and the reference servers (about an hour on
# 2 cores: the side-by-side suite alone is half of it).
bench: install
	$(BIN)/python -m bench.run_all

bench-quick: install
	$(BIN)/python -m bench.run_all --quick

# A soak of 1,000 power cuts under load (root; about an hour): lost/resurrected/partial = 0.
bench-crash: install
	$(BIN)/python -m bench.powercut --cycles $${CYCLES:-1000}

# Install for systemd on this host (root): venv in /opt/artstore, units, man pages, example
# config, the artstore user. DESTDIR=dir stages the files instead.
install-system:
	./scripts/install-system.sh

clean:
	rm -rf $(VENV) build *.egg-info
