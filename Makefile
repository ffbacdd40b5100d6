# Two commands on a fresh machine: `make run` and `make test`.
# TORCH_SPEC picks the PyTorch build: the default is the CPU build (on this kind of machine it
# installs from local disk). GPU users: make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.psconv-installed

.PHONY: run test test-aarch64 aarch64-tools lint format clean

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

# The kernels on AArch64 (NEON, and the portable build), checked where no ARM machine is at hand:
# cross-compiled with a replay driver, run under qemu against PyTorch's reference results.
AARCH64_CXX ?= aarch64-linux-gnu-g++
ARM_BUILD := build/aarch64
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-aarch64: $(STAMP)
	@command -v $(AARCH64_CXX) >/dev/null && command -v qemu-aarch64 >/dev/null || $(MAKE) aarch64-tools
	mkdir -p $(ARM_BUILD) && rm -f $(ARM_BUILD)/replay
	$(AARCH64_CXX) -O2 -std=c++17 -fopenmp -static -Icsrc -o $(ARM_BUILD)/replay \
		tests/native/replay.cpp $(wildcard csrc/*.cpp) 2>$(ARM_BUILD)/compile.log \
		|| (cat $(ARM_BUILD)/compile.log; exit 1)
	$(PY) tests/native/kernel_cases.py write $(ARM_BUILD)/cases-neon.bin 4 $(ARM_BUILD)/cases-generic.bin 16
	qemu-aarch64 $(ARM_BUILD)/replay $(ARM_BUILD)/cases-neon.bin
	PSCONV_KERNEL_ISA=generic qemu-aarch64 $(ARM_BUILD)/replay $(ARM_BUILD)/cases-generic.bin

aarch64-tools:
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq g++-aarch64-linux-gnu qemu-user

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info
