# Two entry points (see README): `make lab` (set up + main job) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: lab test setup clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[lab,test]'
	touch $(STAMP)

setup: $(STAMP)

## Set up, then run the main job: the live dashboard (capsule autoencoder + FPCD RBM
## training on MNIST) on http://127.0.0.1:5006 .
lab: $(STAMP)
	$(BIN)/lab serve

## Set up, then run the whole test suite: unit tests, the browser test (skipped where
## chromium is missing) and every notebook top to bottom (smoke mode, nbval).
test: $(STAMP)
	$(BIN)/python -m pytest tests notebooks --nbval-lax --nbval-current-env

clean:
	rm -rf $(VENV) .pytest_cache
