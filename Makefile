# Everything runs from the project's own virtual environment, made on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Where the CPU build of torch is kept on this project's machines; harmless where it is absent.
WHEELS ?= /opt/wheels
FIND_LINKS := $(if $(wildcard $(WHEELS)),--find-links $(WHEELS),)

.PHONY: demo test lint bench setup clean

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
	$(PY) -m pip install -q $(FIND_LINKS) -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fair-trl demo

test: $(STAMP)
	$(VENV)/bin/ruff check fair_trl tests benchmarks recipes
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -q

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
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
