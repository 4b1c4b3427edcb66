# `make test` and `make demo` are the whole set-up on a fresh clone: each bootstraps .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: test demo lint clean-venv

# Order matters: the CPU torch wheel first (otherwise pip pulls CUDA builds), then DeepSpeed built
# against it without build isolation, then the project itself.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	$(PIP) install --quiet torch==2.13.0
	DS_BUILD_OPS=0 $(PIP) install --quiet --no-build-isolation deepspeed
	$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# The whole pipeline (finetune -> extract -> heads -> tune -> score -> report) with Ray in-process;
# ends by printing where the report is. Data from $UE_DATA_DIR (default: ../shared/data), no hub.
demo: $(STAMP)
	UE_DATA_DIR="$${UE_DATA_DIR:-$(abspath ../shared/data)}" HF_HUB_OFFLINE="$${HF_HUB_OFFLINE:-1}" \
		$(VENV)/bin/ue run jobs/configs/pipelines/demo.yaml

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
