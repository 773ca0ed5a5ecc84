# Two commands do everything on a fresh machine:
#   make demo   create .venv-demo with the inference stack only, segment the bundled samples with every model
#               (installed by the system's pip, 22.3 or newer: the environment holds no pip, setuptools or
#               pre-compiled bytecode of its own, only what segmenting uses)
#   make test   create .venv with the full stack (training, Slicer logic, tests), run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := .venv-demo
# Local copies of the inference dependencies, for the test that installs the wheel into a fresh environment
# (no downloads while the tests run).
WHEELHOUSE := $(VENV)/wheelhouse
SETUP  := $(shell cat pyproject.toml setup.py | cksum | cut -d' ' -f1)
STAMP  := $(VENV)/.installed-$(SETUP)
DEMO_STAMP := $(DEMO)/.installed-$(SETUP)

# Debian packages the tests use (cmake evaluates the extension's file list; dicom3tools' dciodvfy validates the DICOM
# SEG and SR outputs; chromium runs the web app's browser test); installed when missing.
SYSTEM_PACKAGES := cmake dicom3tools chromium

.PHONY: demo test env demo-env system clean

env: system $(STAMP)

system:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

# torch is pinned: a looser requirement pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[train,slicer,test]"
	$(BIN)/python -m pip wheel --quiet --wheel-dir $(WHEELHOUSE) . "setuptools>=77"
	rm -f $(WHEELHOUSE)/lightseglib-*.whl $(VENV)/.installed-*
	touch $@

demo-env: $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml setup.py
	test -x $(DEMO)/bin/python || $(PYTHON) -m venv --without-pip $(DEMO)
	$(PYTHON) -m pip --python $(DEMO)/bin/python install --quiet --no-compile -e .
	rm -f $(DEMO)/.installed-*
	touch $@

demo: demo-env
	$(DEMO)/bin/lightseg models
	$(DEMO)/bin/lightseg demo --out demo-output --threads 2  # an existing demo-output is kept: it writes demo-output-2, ...

test: env
	$(BIN)/python -m pytest -q -p no:cacheprovider Testing

clean:
	rm -rf $(VENV) $(DEMO) demo-output
