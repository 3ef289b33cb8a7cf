"""The Docker path cannot run here (no engine): check what the Makefile and DAGs rely on."""

import yaml
from tests.helpers import ROOT



def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text(encoding="utf-8"))


def test_services_ports_and_project_mount():
    services = _compose()["services"]
    assert set(services) == {"airflow", "mlflow"}
    assert services["airflow"]["ports"] == ["127.0.0.1:8080:8080"]
    assert services["mlflow"]["ports"] == ["127.0.0.1:5000:5000"]
    for service in services.values():
        assert ".:/opt/categories" in service["volumes"]
    environment = services["airflow"]["environment"]
    assert environment["CATEGORIES_PROJECT_DIR"] == "/opt/categories"
    assert environment["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/categories/dags"
    assert environment["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "mlflow server" in services["mlflow"]["command"] and "--port 5000" in services["mlflow"]["command"]


def test_image_builds_from_the_project_files():
    build = _compose()["services"]["mlflow"]["build"]
    dockerfile = (ROOT / build["dockerfile"]).read_text(encoding="utf-8")
    assert "openjdk-17" in dockerfile and "pipenv sync --dev" in dockerfile
    assert "COPY Pipfile Pipfile.lock" in dockerfile
    assert "CATEGORIES_PROJECT_DIR=/opt/categories" in dockerfile
