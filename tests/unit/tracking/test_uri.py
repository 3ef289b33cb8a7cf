"""Where the store is, where a local store keeps its artifacts, and its address without credentials."""
from pathlib import Path

from categories_classification.tracking.uri import (
    PROJECT_ROOT,
    display_tracking_uri,
    is_postgres,
    local_artifact_location,
    masked,
    sqlite_file,
    tracking_uri,
)


def test_artifacts_live_beside_a_local_sqlite_store(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/store/mlflow.db")
    location = local_artifact_location("categories_c1")
    assert location == (tmp_path / "store" / "mlartifacts" / "categories_c1").as_uri()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///relative/mlflow.db")
    location = local_artifact_location("categories_c1")
    assert location == (tmp_path / "relative" / "mlartifacts" / "categories_c1").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert local_artifact_location("categories_c1") is None


def test_credentials_never_appear_in_messages(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://user:secret@mlflow.example:8443/path")
    assert "secret" not in display_tracking_uri()
    assert display_tracking_uri() == "https://***@mlflow.example:8443/path"


def test_default_store_is_inside_the_project(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == f"sqlite:///{Path(PROJECT_ROOT) / 'mlflow.db'}"


def test_masking_hides_user_and_password_and_keeps_the_rest():
    assert masked("postgresql+psycopg2://user:secret@db/mlflow") == "postgresql+psycopg2://***@db/mlflow"
    assert masked("postgresql://user@db:5432/mlflow?sslmode=require") == "postgresql://***@db:5432/mlflow?sslmode=require"
    assert masked("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_which_uris_are_sqlite_files_and_which_postgres():
    assert sqlite_file("sqlite:////abs/mlflow.db") == Path("/abs/mlflow.db")
    assert sqlite_file("sqlite:///mlflow.db") == Path("mlflow.db")
    assert sqlite_file("sqlite:///:memory:") is None and sqlite_file("http://host") is None
    assert is_postgres("postgresql+psycopg2://db/x") and is_postgres("postgres://db/x") and not is_postgres("sqlite:///x")
