# Better Categories 4All: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
# The package index comes from the environment, or else from pip's own default: no registry
# host is ever written into a committed file (Pipfile's [[source]] reads this variable).
PIP_INDEX_URL ?= $(shell $(PYTHON) -c 'from pip._internal.models.index import PyPI; print(PyPI.simple_url)')
export PIP_INDEX_URL
export PIPENV_VENV_IN_PROJECT := 1
export PIPENV_VERBOSITY := -1
export PIPENV_NOSPIN := 1
# Airflow writes to ~/airflow on a bare import unless told otherwise.
export AIRFLOW_HOME ?= $(CURDIR)/airflow_home

PIPENV := $(PYTHON) -m pipenv
RUN := $(PIPENV) run
CLI := $(RUN) python categories_classification_cli.py
VENV_STAMP := .venv/.synced
DATA_STAMP := data/train/client_id=client_9/data_train.csv.gz
DATE ?= $(shell date -u +%F)
PYTEST_ARGS ?=
# `make test` spreads whole test files over the cores (a file's tests share their module's servers and
# stores; the files that start a whole Airflow stack share one worker: tests/conftest.py); most of the
# suite waits on servers and subprocesses. TEST_WORKERS= runs it in one process.
TEST_WORKERS ?= -n logical --maxprocesses=4 --dist loadfile
# The local stack's profile: standalone (Airflow on SQLite, LocalExecutor) or celery (CeleryExecutor,
# PostgreSQL, Redis, two workers: scripts/profiles/celery.py). Both are started and stopped by scripts/supervisor.py.
PROFILE ?= standalone

.PHONY: help init-pipenv data demo train-all predict-all generate-dags init-airflow start-airflow stop-airflow \
	e2e-airflow spark-cluster stop-spark-cluster spark-connect stop-spark-connect run-jupyter report fleet-report test unit-tests lint clean

help: ## Show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}'

init-pipenv: $(VENV_STAMP) ## Create the pipenv environment in .venv from Pipfile.lock (installs pipenv if missing)

$(VENV_STAMP): Pipfile.lock
	@$(PYTHON) -m pipenv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet pipenv
	$(PIPENV) sync --dev
	@touch $@

data: $(DATA_STAMP) ## Generate the 10 example clients' datasets under data/ (deterministic)

$(DATA_STAMP): scripts/generate_example_data.py | $(VENV_STAMP)
	$(RUN) python scripts/generate_example_data.py --output-dir data

demo: $(VENV_STAMP) data ## Train and predict the 10 example clients (MLflow store: ./mlflow.db)
	$(CLI) train-all
	$(CLI) predict-all --inference_date=$(DATE)

train-all: $(VENV_STAMP) ## Train every client of conf/clients_config.yaml
	$(CLI) train-all

predict-all: $(VENV_STAMP) ## Predict every client of conf/clients_config.yaml for DATE (default: today)
	$(CLI) predict-all --inference_date=$(DATE)

generate-dags: $(VENV_STAMP) ## Render dags/ from conf/clients_config.yaml (or CONFIG_FILE) and dags_templates/
	$(RUN) python -m scripts.generate_dags

init-airflow: $(VENV_STAMP) ## Prepare AIRFLOW_HOME (./airflow_home): airflow.cfg as the stack runs Airflow (DAGs from dags/), database migrated
	$(RUN) python -m scripts.local_stack init

start-airflow: $(VENV_STAMP) data ## Start Airflow (http://127.0.0.1:8080) and MLflow (http://127.0.0.1:5000) in the background (PROFILE=celery: CeleryExecutor on PostgreSQL + Redis)
	$(RUN) python -m scripts.local_stack start --profile $(PROFILE)

stop-airflow: ## Stop the processes started by start-airflow (same PROFILE): SIGTERM, SIGKILL after 30 s
	$(RUN) python -m scripts.local_stack stop --profile $(PROFILE)

e2e-airflow: $(VENV_STAMP) data ## Smoke test: start the stack (PROFILE), run client_0's DAGs via the REST API, check output, stop
	$(RUN) python -m scripts.local_stack e2e --profile $(PROFILE)

spark-cluster: $(VENV_STAMP) ## Start a local Spark standalone cluster (master spark://127.0.0.1:7077, UI :8081)
	$(RUN) python -m scripts.spark_cluster start

stop-spark-cluster: ## Stop the Spark master and workers started by spark-cluster
	$(RUN) python -m scripts.spark_cluster stop

spark-connect: $(VENV_STAMP) ## Start a shared Spark Connect service (sc://127.0.0.1:15002; start-airflow starts one too)
	$(RUN) python -m scripts.spark_connect start

stop-spark-connect: ## Stop the Spark Connect service started by spark-connect
	$(RUN) python -m scripts.spark_connect stop

run-jupyter: $(VENV_STAMP) ## Start JupyterLab on http://127.0.0.1:8888 in the pipenv environment (notebooks/)
	$(RUN) jupyter lab --ip=127.0.0.1 --port=8888 --no-browser --notebook-dir=notebooks

report: $(VENV_STAMP) ## Execute notebooks/inspect_inference_result.ipynb (after make demo) into reports/*.html
	$(RUN) jupyter nbconvert --to html --execute notebooks/inspect_inference_result.ipynb --output-dir reports
	@echo "report: reports/inspect_inference_result.html"

fleet-report: $(VENV_STAMP) ## One static, sortable HTML page of every client's status and flags: reports/fleet_status.html
	$(CLI) fleet-status --html reports/fleet_status.html
	@echo "open reports/fleet_status.html in a browser"

test: $(VENV_STAMP) ## Run the whole test suite (unit, integration with MLflow + Spark, acceptance)
	$(RUN) python -m pytest $(TEST_WORKERS) $(PYTEST_ARGS)

unit-tests: $(VENV_STAMP) ## Run the fast unit tests only (no Spark, no MLflow)
	$(RUN) python -m pytest tests/unit $(PYTEST_ARGS)

.PHONY: bench bench-quick
bench: $(VENV_STAMP) ## Run every benchmark at full size (about 2.5 hours on 2 cores): benchmarks/results.md and PNG plots
	$(RUN) python -m benchmarks.run

bench-quick: $(VENV_STAMP) ## Run the benchmarks at small sizes (about 12 min) into benchmarks/quick/ (CI keeps the harness green)
	$(RUN) python -m benchmarks.run --quick

lint: $(VENV_STAMP) ## Lint with pylint and the project's .pylintrc; ruff's Airflow rules (AIR) on the generated DAGs
	$(RUN) pylint --rcfile=.pylintrc categories_classification categories_classification_cli.py scripts tests benchmarks
	$(RUN) ruff check --select AIR dags

clean: ## Remove generated data, outputs, the local MLflow store and caches (keeps .venv and airflow_home)
	rm -rf data/train data/prediction data/products_categories mlflow.db .mlflow.db.locks mlruns mlartifacts spark-warehouse reports .run
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
	rm -rf .pytest_cache .hypothesis
