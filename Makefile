# The two set-up commands of the README:
#   make demo   install, then run the whole pipeline on the demo catalog and print the report path
#   make test   install, then run the tests
# Everything installs into $(VENV). A CPU build of torch is put in place first when no torch
# is installed (a plain `pip install torch` on Linux pulls a multi-GB CUDA build): from
# TORCH_INDEX, PyTorch's CPU wheel index, when it answers; otherwise from pip's configured
# index (a machine without access to it, e.g. one with a local CPU wheel). TORCH_INDEX= skips it.

VENV        ?= .venv
PYTHON      ?= python3
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.lensless-installed

.PHONY: install demo test test-slow lint dev bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || \
	  if [ -n "$(TORCH_INDEX)" ] && $(PY) -c "import urllib.request as u; u.urlopen('$(TORCH_INDEX)/', timeout=10)" 2>/dev/null; \
	  then $(PY) -m pip install -q --index-url $(TORCH_INDEX) "$(TORCH_SPEC)"; \
	  else $(PY) -m pip install -q "$(TORCH_SPEC)"; fi
	$(PY) -m pip install -q -e ".[dev,scale]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/lensless demo

# pytest exits 5 when it collects no tests: that is a failure, not a pass.
test: install
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# Long quality runs at default configs (minutes each), excluded from `make test`.
test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check .

dev: install
	$(VENV)/bin/lensless dev

bench: install
	$(PY) bench/ingest.py
	$(PY) bench/embed.py
	$(PY) bench/embed_memory.py
	$(PY) bench/index.py --n 200000 --d 128
	$(PY) bench/rerank.py

clean:
	rm -rf .lensless
