# Two commands on a fresh machine:  make demo  and  make test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test system-deps install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned: the CPU wheel on disk. Anything installed after it then
# finds torch satisfied instead of pulling a multi-GB CUDA build.
# constraints.txt: the dependency versions the suite last passed with.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests drive: a PostgreSQL server and Chromium.
system-deps:
	bash scripts/install-system-deps.sh

demo: $(STAMP)
	$(BIN)/alignloop demo

# pytest exits 5 when it collected no tests: that is a failure, not a pass.
test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; exit $$status

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
