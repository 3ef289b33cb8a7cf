"""train-all across worker processes: every client trained into *this* store, failures contained."""
import sys

import pytest
from mlflow.tracking import MlflowClient

from categories_classification.batch import train_all, training_pool
from categories_classification.config import load_config
from tests.helpers import DATE, client_entry, write_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tracking_store")]


def test_parallel_training_keeps_client_order_and_contains_failures(small_data, tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_PREFIX", str(small_data))
    # small_a pins a forest: its thread count is what train-all decides (the other families fit on one thread).
    config_path = write_config(tmp_path / "clients.yaml", {"small_b": client_entry(10),
                                                           "small_a": client_entry(10, family="random_forest"),
                                                           "absent": client_entry()})
    seen = []

    outcomes = train_all(load_config(config_path), DATE, on_done=lambda outcome: seen.append(outcome.client_id),
                         workers=2)

    assert [outcome.client_id for outcome in outcomes] == ["absent", "small_a", "small_b"]
    assert sorted(seen) == ["absent", "small_a", "small_b"]
    absent, small_a, small_b = outcomes
    assert not absent.ok and "client 'absent': file" in absent.error and "not found" in absent.error
    assert small_a.ok and small_b.ok
    # The workers used the store of this test (the parent's environment), not the fork server's.
    client = MlflowClient()
    for outcome in (small_a, small_b):
        (version,) = client.search_model_versions(f"name = '{outcome.client_id}_model'")
        assert int(version.version) == outcome.result.version == 1
        assert int(client.get_model_version_by_alias(f"{outcome.client_id}_model", "champion").version) == 1
    # Two clients side by side on 2 cores: each fit gets one thread unless the config says otherwise.
    assert small_a.result.params["n_jobs"] == 1


def _load_order() -> tuple[int, int]:
    names = list(sys.modules)  # in the order they were first imported
    return names.index("skops.io"), names.index("mlflow")


def test_training_workers_have_skops_loaded_before_mlflow():
    # skops searches every loaded module for the types it trusts: loaded before MLflow and the
    # trainer, a worker's first training does not pay ~1.3 s more for it.
    with training_pool(1) as pool:
        skops_at, mlflow_at = pool.submit(_load_order).result(timeout=120)
    assert skops_at < mlflow_at
