# Two commands on a fresh machine: `make run` and `make test` (both install what is missing first).
PY        ?= python3
VENV      ?= .venv
VPY       := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
HOST      ?= 127.0.0.1
PORT      ?= 8000
export OMP_NUM_THREADS ?= 2

.PHONY: setup run test test-fast bench lint migrate clean

$(VENV)/.installed: pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q $(TORCH_PIN)
	$(VPY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

migrate: setup
	$(VENV)/bin/plasticity migrate

run: setup
	$(VENV)/bin/plasticity serve --host $(HOST) --port $(PORT)

test: setup
	$(VPY) -m pytest tests --timeout=900

test-fast: setup
	$(VPY) -m pytest tests -q -m "not slow and not browser"

bench: setup
	$(VENV)/bin/plasticity bench

lint: setup
	$(VENV)/bin/ruff check rules discovery workers service tests experiments

clean:
	rm -rf $(VENV) data .pytest_cache
