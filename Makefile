# The two entry points of the README: `make demo` (the main job on the embedded synthetic world)
# and `make test` (the test suite, also what CI runs through .ci/run). Both create the pinned
# virtual environment in .venv on first use; nothing else is needed but python3 (3.10+).
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# Rules call the `copa` command: the environment's bin must come first on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: demo test pull lock clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint requirements.lock --editable '.[test]'
	touch $@

demo: $(STAMP)
	$(BIN)/snakemake --cores all
	$(BIN)/snakemake --report results/demo/report.html
	$(BIN)/copa targets
	$(BIN)/copa readme-results

# A fresh clone without retraining: the runs and results from the DVC remote, the synthetic world
# regenerated bit for bit (not cached), then every output marked up to date for Snakemake (DVC
# does not restore mtimes, and the clone has no .snakemake/ metadata).
pull: $(STAMP)
	$(BIN)/dvc pull
	$(BIN)/snakemake --cores all data/synthetic-demo
	$(BIN)/snakemake --cores all --touch

# In parallel processes, one per core (pytest-xdist), each taking a new test when it finishes one.
test: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist worksteal

# Re-pin the transitive dependencies after changing a pin in pyproject.toml.
lock:
	rm -rf /tmp/copa-lock-venv && $(PYTHON) -m venv /tmp/copa-lock-venv
	/tmp/copa-lock-venv/bin/pip install --quiet '.[test]'
	{ echo "# Transitive pins (pip constraints) from a clean install of pyproject.toml's pinned set. Regenerate: make lock"; \
	  /tmp/copa-lock-venv/bin/pip freeze --exclude copa-repro; } > requirements.lock

clean:
	rm -rf $(VENV) .snakemake
