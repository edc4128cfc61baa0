# The two set-up commands of README.md. Each creates/uses .venv, installs the pinned CPU torch FIRST
# (an unpinned torch would download several GB of CUDA wheels), then medpipe and its dependencies.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install run test test-all lint clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

## Train bundles/lung_nodule_ct on the embedded synthetic phantoms (made on first use) into runs/lung_nodule_ct/<time>/,
## about 6.5 min on 2 CPU cores; the shipped bundles/lung_nodule_ct/models/ is not touched (medpipe promote ships a run).
run: install
	$(BIN)/medpipe train --bundle bundles/lung_nodule_ct

## The default test suite (well under 10 min on 2 cores); `make test-all` adds the slow tests.
test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: install
	$(BIN)/ruff check medpipe tests benchmarks

## Delete the generated synthetic data: each built-in generator's folder in the data cache
## (medpipe.data.synthetic.dataset_folder) and data_manifests/demo_data, where older versions wrote it.
clean-demo:
	$(BIN)/python -c "import shutil, medpipe.data.synthetic as s; [shutil.rmtree(s.dataset_folder(n), ignore_errors=True) for n in s.REGISTRY]"
	rm -rf data_manifests/demo_data
