# Two entry points for a fresh machine with Python 3.11 (see README):
#   make demo   -> generate `shapes`, train, evaluate, write runs/demo/report.md
#   make test   -> the whole test suite
# Both create (or reuse) .venv and install the pinned dependencies first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/coembed demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=15

clean:
	rm -rf $(VENV) runs .pytest_cache
