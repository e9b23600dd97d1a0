# Strata — the two commands: `make demo` and `make test`.
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= ./data
BUCKET ?= $(DATA)/bucket

.PHONY: install demo test test-fast bench clean image

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

# Two days of generated data into a local bucket, imported, verified, then the nightly job.
demo: install
	rm -rf $(DATA) && mkdir -p $(DATA)
	$(BIN)/strata generate --series 500 --hours 48 --out $(DATA)/demo.om
	$(BIN)/strata import --bucket $(BUCKET) --tenant demo $(DATA)/demo.om
	$(BIN)/strata blocks verify --bucket $(BUCKET)
	$(BIN)/strata retention set raw=30d 5m=180d 1h=2y 1d=forever --bucket $(BUCKET)
	$(BIN)/strata compact --bucket $(BUCKET)
	$(BIN)/strata blocks verify --bucket $(BUCKET)
	$(BIN)/strata blocks ls --bucket $(BUCKET)
	@echo '# What retention would do once this data is old: plan as of 2030-01-01 (read-only; --now pretends a date).'
	$(BIN)/strata retention plan --bucket $(BUCKET) --now 2030-01-01

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not integration and not slow"

bench: install
	$(BIN)/python bench/bench_raw.py
	$(BIN)/python bench/bench_import.py
	$(BIN)/python bench/bench_tiers.py
	$(BIN)/python bench/bench_compact.py
	$(BIN)/python bench/bench_query.py
	$(BIN)/python bench/bench_kernels.py
	$(BIN)/python bench/bench_dashboard.py
	$(BIN)/python bench/bench_receive.py

clean:
	rm -rf $(DATA) bench/out .pytest_cache .hypothesis

# The container image (infra/README.md: push it, then `kustomize edit set image strata=...`).
IMAGE ?= strata
image:
	docker build -t $(IMAGE):$$($(PY) -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])') .
