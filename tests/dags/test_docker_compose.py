"""The Docker path cannot run here (no engine): check what the Makefile and DAGs rely on, and that the compose
file runs the production topology (CeleryExecutor on PostgreSQL and Redis, MLflow on PostgreSQL)."""
import re

import yaml
from tests.helpers import ROOT

AIRFLOW_SERVICES = {"api-server", "scheduler", "dag-processor", "triggerer", "worker", "airflow-init"}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text(encoding="utf-8"))


def test_services_ports_and_project_mount():
    services = _compose()["services"]
    assert set(services) == AIRFLOW_SERVICES | {"mlflow", "postgres", "redis"}
    published = {name: service["ports"] for name, service in services.items() if "ports" in service}
    assert published == {"api-server": ["127.0.0.1:8080:8080"], "mlflow": ["127.0.0.1:5000:5000"]}
    for name in AIRFLOW_SERVICES | {"mlflow"}:
        assert ".:/opt/categories" in services[name]["volumes"]
    assert "mlflow server" in services["mlflow"]["command"] and "--port 5000" in services["mlflow"]["command"]


def test_airflow_runs_celery_on_postgresql_and_redis():
    services = _compose()["services"]
    for name in AIRFLOW_SERVICES:
        environment = services[name]["environment"]
        assert environment["CATEGORIES_PROJECT_DIR"] == "/opt/categories"
        assert environment["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/categories/dags"
        assert environment["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert environment["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
        assert environment["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379/")
        assert environment["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://api-server:8080/execution/"
        assert environment["CATEGORIES_LOCK_URL"].endswith("@postgres:5432/mlflow")
    commands = {name: services[name]["command"] for name in AIRFLOW_SERVICES}
    assert commands["airflow-init"] == "pipenv run airflow db migrate"
    assert commands["worker"] == "pipenv run airflow celery worker" and services["worker"]["deploy"]["replicas"] == 2
    for name in ("api-server", "scheduler", "dag-processor", "triggerer", "worker"):
        assert services[name]["depends_on"]["airflow-init"] == {"condition": "service_completed_successfully"}
    assert "airflow api-server" in commands["api-server"] and "airflow dag-processor" in commands["dag-processor"]
    mlflow_store = services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert mlflow_store.startswith("postgresql+psycopg2://") and mlflow_store.endswith("@postgres:5432/mlflow")
    init_sql = services["postgres"]["volumes"][1].split(":")[0]
    assert "CREATE DATABASE mlflow" in (ROOT / init_sql).read_text(encoding="utf-8")


def test_no_password_is_written_in_the_compose_file():
    text = (ROOT / "docker-compose.yaml").read_text(encoding="utf-8")
    # Every credential is interpolated from the environment: user:${VARIABLE}@ in URLs, ${VARIABLE} elsewhere.
    for match in re.finditer(r"://[^:/@\s]+:([^@\n]+)@", text):
        assert match.group(1).startswith("${POSTGRES_PASSWORD"), match.group(0)
    environment = _compose()["services"]["postgres"]["environment"]
    assert environment["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_image_builds_from_the_project_files():
    build = _compose()["services"]["airflow-init"]["build"]
    dockerfile = (ROOT / build["dockerfile"]).read_text(encoding="utf-8")
    assert "openjdk-17" in dockerfile and "pipenv sync --dev" in dockerfile
    assert "COPY Pipfile Pipfile.lock" in dockerfile
    assert "CATEGORIES_PROJECT_DIR=/opt/categories" in dockerfile
