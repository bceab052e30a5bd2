# ArtStore. `make run` and `make test` each do every set-up step on a fresh Debian machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test bench system-deps clean

system-deps:
	./scripts/install-system-deps.sh

$(STAMP): pyproject.toml scripts/install-system-deps.sh
	./scripts/install-system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The embedded default: single node, admin role, data in ./artstore-data, 127.0.0.1:8470.
run: install
	$(BIN)/artstored

test: install
	$(BIN)/pytest -q tests

bench: install
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) build *.egg-info
