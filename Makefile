# satedge: `make demo` runs the main job, `make test` runs the tests. Both create or reuse .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.satedge-installed
# Where no torch is installed, install a CPU build first so that the plain `torch` requirement
# does not pull a multi-GB CUDA build: a local CPU wheel that pip's find-links offers (checked
# offline with --no-deps) is taken as it is; otherwise the newest CPU wheel from PyTorch's CPU
# index. Override TORCH_LOCAL or TORCH_CPU_INDEX to choose another.
TORCH_LOCAL ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

# CUDA 11.7 NVRTC + ptxas + headers for the JetPack 5 (CUDA 11.4) compile check (cuda/nvrtc_check.py
# --cuda 11). In a folder of their own: they would collide with the CUDA 12 packages in .venv.
CUDA11_DIR := cuda/build/cuda11
CUDA11_PKGS := "nvidia-cuda-nvrtc-cu11==11.7.*" "nvidia-cuda-nvcc-cu11==11.7.*" "nvidia-cuda-runtime-cu11==11.7.*"

.PHONY: install demo demo-quick test test-all cuda-check cuda11-tools bench clean

install: $(STAMP)

$(STAMP): setup.py Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || { \
	  if $(PY) -m pip download -q --no-deps --no-index -d $(VENV)/.torch-probe "$(TORCH_LOCAL)" >/dev/null 2>&1; then \
	    $(PY) -m pip install -q "$(TORCH_LOCAL)"; \
	  else \
	    $(PY) -m pip install -q torch --index-url $(TORCH_CPU_INDEX) --extra-index-url https://pypi.org/simple; \
	  fi; rm -rf $(VENV)/.torch-probe; }
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m satedge_cli demo --out out/demo --json out/demo/summary.json

demo-quick: $(STAMP)
	$(PY) -m satedge_cli demo --quick --out out/demo-quick --json out/demo-quick/summary.json

cuda-check:
	bash cuda/check.sh

cuda11-tools: $(CUDA11_DIR)/.installed

$(CUDA11_DIR)/.installed: $(STAMP)
	$(PY) -m pip install -q --no-deps --target $(CUDA11_DIR) $(CUDA11_PKGS)
	@touch $@

test: $(STAMP) cuda11-tools cuda-check
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/engines.py

clean:
	rm -rf out build *.egg-info cuda/build
