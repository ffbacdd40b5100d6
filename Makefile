# Two commands on a fresh machine: `make run` and `make test`.
# TORCH_SPEC picks the PyTorch build: the default is the CPU build (on this kind of machine it
# installs from local disk). GPU users: make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.psconv-installed

.PHONY: run test lint format clean

$(STAMP): pyproject.toml $(wildcard setup.py) $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Main job: dense vs sparse VGG16 on a real CIFAR-10 subset. Data: DATA (a folder or archive), else
# $$PSCONV_DATA, else the official archive (downloaded). Our checkouts have ../shared/data beside them.
DATA ?= $(wildcard ../shared/data)
run: $(STAMP)
	$(VENV)/bin/psconv demo $(if $(DATA),--data-dir $(DATA))

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info
