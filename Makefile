# Two commands do everything on a fresh machine:
#   make demo   create .venv, install, segment the bundled samples with every registered model
#   make test   create .venv, install, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned: a looser requirement pulls a multi-GB CUDA build.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test env clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[train,slicer,test]"
	rm -f $(VENV)/.installed-*
	touch $@

demo: env
	$(BIN)/lightseg models
	$(BIN)/lightseg demo --out demo-output --threads 2

test: env
	$(BIN)/python -m pytest -q -p no:cacheprovider Testing

clean:
	rm -rf $(VENV) demo-output
