"""registry.promotion_lock: one gate at a time per client, across processes (no MLflow needed)."""
from contextlib import nullcontext

import pytest

from categories_classification import registry
from tests.helpers import assert_one_gate_at_a_time_per_client


@pytest.mark.slow  # two Python processes that import MLflow
def test_a_second_process_waits_for_the_same_clients_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert_one_gate_at_a_time_per_client(tmp_path)
    # Every lock of the store sits in one hidden folder, none beside the store itself.
    assert (tmp_path / ".mlflow.db.locks" / "client_0_model.lock").exists()
    assert not list(tmp_path.glob("*.lock"))


def test_a_tracking_server_has_no_local_lock(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert isinstance(registry.promotion_lock("client_0"), nullcontext)
