# offload: `make demo` runs the demo, `make test` runs the whole suite (with coverage),
# `make check` lints, type-checks, checks the import contract and the demo's message contracts.
PYTHON ?= $(shell sh scripts/python.sh)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The browser tests drive Debian's Chromium (never a downloaded browser build).
CHROMIUM ?= /usr/bin/chromium

.PHONY: bytecode demo test check lint types imports contracts clean chromium bench bench-give-backs bench-peers bench-drain bench-enqueue bench-pickup bench-api bench-burst bench-tracing bench-jobs-page bench-metrics bench-claims bench-scaleout bench-progress chaos

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,demo]' --group dev
	touch $(STAMP)

# The project's own bytecode, written ahead (only what changed since; a fraction of a second
# when nothing did). Where PYTHONDONTWRITEBYTECODE is set, as in some CI images, Python
# writes no .pyc by itself, and every process the suite, the demo and the benchmarks start
# compiled offload's source again: a worker took 0.78 s to its first job, 0.58 s with it
# written (median of five each, PostgreSQL). Installed packages have theirs from pip.
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q -j 0 src tests bench examples

demo: bytecode
	$(BIN)/offload demo

# The whole suite under coverage.py, the web and worker processes it starts included; the
# report lists the files not fully covered and fails under the floor (pyproject.toml).
# Four pytest workers on two cores, each taking whole files (their module fixtures stay in
# one process): much of the suite waits on the processes and servers it starts, and four
# took 561 s where two took 728 s (quiet, same commit). Coverage follows the workers, as it
# follows every subprocess (pyproject's [tool.coverage.run]).
test: bytecode chromium
	rm -f .coverage .coverage.*
	COVERAGE_FILE=$(CURDIR)/.coverage $(BIN)/coverage run -m pytest -n 4 --dist loadfile
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report

chromium:
	@test -x $(CHROMIUM) || { echo "installing Debian's chromium for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	  || echo "warning: could not install chromium: the browser tests will skip (fail in CI)"; }

check: lint types imports contracts

lint: $(STAMP)
	$(BIN)/ruff check src tests examples
	$(BIN)/ruff format --check src tests examples

types: $(STAMP)
	$(BIN)/mypy

# The import contract ([tool.importlinter] in pyproject.toml): which package may import which.
imports: $(STAMP)
	$(BIN)/lint-imports

# The demo's message contracts against their committed snapshot: what a project's CI runs
# (`offload contracts export` writes the snapshot again after an intended change).
contracts: $(STAMP)
	$(BIN)/offload contracts check --app offload.demo.contracts:app src/offload/demo/contracts.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .coverage .coverage.*

# Benchmarks start their processes from compiled code too, as an installed offload does.
bench-peers bench-drain bench-enqueue bench-pickup bench-claims bench-give-backs bench-metrics \
bench-api bench-jobs-page bench-burst bench-tracing bench-scaleout bench-progress chaos: bytecode

# Benchmarks print their figures and write them to bench/RESULTS.md (not part of `make test`).
bench: bench-api bench-drain bench-enqueue bench-pickup bench-peers bench-burst bench-tracing bench-jobs-page bench-metrics bench-claims bench-scaleout bench-give-backs bench-progress

bench-peers: $(STAMP)
	bash bench/peers.sh

bench-drain: $(STAMP)
	$(BIN)/python bench/drain.py

bench-enqueue: $(STAMP)
	$(BIN)/python bench/enqueue.py
	$(BIN)/python bench/per_call_floor.py

bench-pickup: $(STAMP)
	$(BIN)/python bench/pickup_stages.py

bench-claims: $(STAMP)
	$(BIN)/python bench/claims.py

# (against 08da3f1 by default: the last commit before progress reports were coalesced)
bench-progress: $(STAMP)
	$(BIN)/python bench/progress_reports.py --against $${AGAINST:-08da3f1}

bench-give-backs: $(STAMP)
	$(BIN)/python bench/give_backs.py

bench-metrics: $(STAMP)
	$(BIN)/python bench/metrics_overhead.py

bench-api: $(STAMP)
	$(BIN)/python bench/api_latency.py

# The dashboard's jobs page at 1,000,000 jobs in SQLite and PostgreSQL.
bench-jobs-page: $(STAMP)
	$(BIN)/python bench/jobs_page.py

bench-burst: $(STAMP)
	$(BIN)/offload bench burst --out bench

bench-tracing: $(STAMP)
	$(BIN)/python bench/tracing.py

# Drain throughput with 1, 2, 4 and 8 worker hosts (network namespaces; needs root) on
# private PostgreSQL and Redis servers; writes its table and bench/scaleout.png.
bench-scaleout: $(STAMP)
	$(BIN)/python -m bench.scaleout


# The fault-injection run (bench/chaos): every engine and Redis setting, 60 s of seeded faults
# each; prints a table per engine/setting and writes them into docs/guarantees.md. A short
# version of it runs in `make test` (tests/chaos, marker `chaos`).
chaos: $(STAMP)
	$(BIN)/python -m bench.chaos --all --seed 1 --jobs 3000 --fault-seconds 60 --workers 3 \
	  --docs docs/guarantees.md
