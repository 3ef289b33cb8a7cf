"""Which promotion lock a store gets, decided from the URIs alone (nothing locked, no process)."""
from contextlib import nullcontext

from categories_classification.tracking.locks import LOCK_URL_VARIABLE, lock_file, promotion_lock


def test_a_tracking_server_has_no_local_lock(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.delenv(LOCK_URL_VARIABLE, raising=False)
    assert isinstance(promotion_lock("client_0"), nullcontext)


def test_a_tracking_server_with_a_lock_url_gets_an_advisory_lock(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv(LOCK_URL_VARIABLE, "postgresql+psycopg2://user:secret@db:5432/mlflow")
    assert not isinstance(promotion_lock("client_0"), nullcontext)  # not entered: no connection made


def test_every_lock_of_a_store_is_in_one_hidden_folder(tmp_path):
    assert lock_file(tmp_path / "mlflow.db", "client_0_model") == tmp_path / ".mlflow.db.locks" / "client_0_model.lock"
