"""Registry naming and where a local store keeps its artifacts (no MLflow server involved)."""
from pathlib import Path

from categories_classification import registry


def test_names_per_client():
    assert registry.model_name("client_0") == "client_0_model"
    assert registry.experiment_name("client_0") == "categories_client_0"


def test_artifacts_live_beside_a_local_sqlite_store(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/store/mlflow.db")
    location = registry.local_artifact_location("categories_c1")
    assert location == (tmp_path / "store" / "mlartifacts" / "categories_c1").as_uri()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///relative/mlflow.db")
    location = registry.local_artifact_location("categories_c1")
    assert location == (tmp_path / "relative" / "mlartifacts" / "categories_c1").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert registry.local_artifact_location("categories_c1") is None


def test_credentials_never_appear_in_messages(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://user:secret@mlflow.example:8443/path")
    assert "secret" not in registry.display_tracking_uri()
    assert registry.display_tracking_uri() == "https://***@mlflow.example:8443/path"


def test_default_store_is_inside_the_project(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert registry.tracking_uri() == f"sqlite:///{Path(registry.PROJECT_ROOT) / 'mlflow.db'}"
