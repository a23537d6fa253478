# lorastack: `make run` starts the hub, `make test` runs the tests, `make install` sets up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU wheel of torch; a torch already in the venv (a CUDA build, say) is kept.
TORCH_SPEC ?= torch==2.13.0
# Elsewhere PyPI's torch is a CUDA build; TORCH_INDEX=https://download.pytorch.org/whl/cpu
# takes the CPU wheel from PyTorch's own index.
TORCH_INDEX ?=
PORT ?= 8000

.PHONY: install run test test-fast bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet \
		$(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	PORT=$(PORT) $(VENV)/bin/lorastack serve

test: install
	$(VENV)/bin/ruff check --select F hub tests bench
	$(PY) -m pytest -q

bench: install
	$(PY) bench/merge.py
	$(PY) bench/upload.py

clean:  # the venv and caches; ./var (the embedded registry's data) is left alone
	rm -rf $(VENV) .pytest_cache .hypothesis
