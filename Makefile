# The few verbs a newcomer needs. `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-faults test-faults-all test-timm lint bench evaluate clean

$(STAMP): pyproject.toml requirements-cpu.txt
	$(PYTHON) -m venv $(VENV)
	# CPU torch first (pinned, on disk here) so the open range in pyproject.toml installs nothing more.
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-cpu.txt
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

# The parity suite's own environment: timm (which needs torchvision, and PyPI's torchvision does
# not import beside the CPU torch above) with torch 2.14.1 (requirements-timm.txt). ~7 GB, ~3 min.
TIMM_VENV ?= .venv-timm
$(TIMM_VENV)/.installed: pyproject.toml requirements-timm.txt
	$(PYTHON) -m venv $(TIMM_VENV)
	$(TIMM_VENV)/bin/pip install -q --disable-pip-version-check -r requirements-timm.txt
	$(TIMM_VENV)/bin/pip install -q --disable-pip-version-check -e ".[dev,timm]"
	touch $@

demo: $(STAMP)
	$(BIN)/streamembed demo --output output

lint: $(STAMP)
	$(BIN)/ruff check src tests tests_timm
	$(BIN)/ruff format --check src tests tests_timm
	$(BIN)/mypy

# The suite's tests are processes waiting on processes (LocalClusters, daemons, servers): two
# pytest workers keep both cores busy. --dist loadscope keeps each module on one worker: its
# module fixtures (archives, backfills) are built once and the SLURM module starts one
# slurmctld (fixed ports); the session's shared archives are built once (conftest.made_once).
# Each worker starts its own LocalClusters (TEST_WORKERS=0 runs serially).
TEST_WORKERS ?= 2
test: lint
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadscope --durations=15

# The built-in backbones against timm itself: every arch, band count and checkpoint layout, and
# a backfill's stored cells against timm's forward (CI; ~2 min once the environment exists).
test-timm: $(TIMM_VENV)/.installed
	$(TIMM_VENV)/bin/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) tests_timm

# The slow half of the fault suite (CI): the real backfill SIGKILLed at every crash point once,
# and workers killed mid-block (~7 min); then the fuzzed items and rasters at 4x the cases of
# make test, drawn afresh (~1 min).
test-faults: $(STAMP)
	$(BIN)/pytest -q -m "faults and not soak"
	FUZZ_SCALE=4 $(BIN)/pytest -q tests/test_fuzz_inputs.py

# All of it: every crash point at two timings or more (~14 min).
test-faults-all: $(STAMP)
	$(BIN)/pytest -q -m faults

# Every detector on the scenario set and on the second generator's tuning and held-out seeds:
# docs/evaluation.md and its maps (the archives in evaluation/ are reused by a later run).
evaluate: $(STAMP)
	$(BIN)/streamembed evaluate --scenarios all --work evaluation --doc docs/evaluation.md \
		--encoders resnet18,resnet50,vit_small_patch16_224

bench: $(STAMP)
	$(BIN)/streamembed bench --config benchmarks/cpu-local.yaml

clean:
	rm -rf output demo-data evaluation
