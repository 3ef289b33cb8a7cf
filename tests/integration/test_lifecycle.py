"""Model lifecycle: promotion gate, champion alias, pinning, rollback and lineage.

Runs the same flow against a real `mlflow server` process (on SQLite, and on PostgreSQL as in the Celery
profile) and against the embedded SQLite store.
"""
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from categories_classification.records import (
    CHAMPION_BEFORE_TAG,
    CLIENT_ID_TAG,
    PREVIOUS_SCORE,
    PROMOTION_DECISION_TAG,
    ROWS_OUT_METRIC,
    TRAINING_DATE_TAG,
    experiment_name,
)
from categories_classification.tracking.artifacts import load_model
from categories_classification.tracking.registry import champion_version, resolve_model
from categories_classification.errors import ModelNotFoundError
from categories_classification.prediction.predictor import predict_categories
from categories_classification.training.trainer import train_model
from categories_classification_cli import main
from tests.helpers import FEATURES, non_parquet_in_dataset, read_manifest

pytestmark = pytest.mark.slow
WEAK = {"n_estimators": 1, "max_depth": 1}
MEDIOCRE = {"n_estimators": 3, "max_depth": 3}
STRONG = {"n_estimators": 60}


@pytest.fixture(params=["server", "embedded", "server-postgresql"])
def store(request):
    """The tracking store under test: a real server (SQLite or PostgreSQL backend), or the embedded SQLite store."""
    name = {"server": "mlflow_server", "embedded": "tracking_store",
            "server-postgresql": "mlflow_server_on_postgres"}[request.param]
    return request.getfixturevalue(name)


def _manifest(prefix: Path, date: str) -> dict:
    return read_manifest(prefix, "small_a", date)


@pytest.mark.usefixtures("store")
def test_gate_alias_pin_rollback_and_lineage(small_data, spark, capsys):
    prefix = str(small_data)
    first = train_model("small_a", FEATURES, MEDIOCRE, "2026-11-01", data_prefix=prefix)
    assert first.decision.promote and "first version" in first.decision.reason
    assert champion_version("small_a").version == 1

    weak = train_model("small_a", FEATURES, WEAK, "2026-11-02", data_prefix=prefix)
    assert weak.version == 2 and not weak.decision.promote
    assert weak.decision.champion_version == 1
    assert weak.decision.champion_score > weak.decision.challenger_score + weak.decision.tolerance
    assert champion_version("small_a").version == 1  # the weak retraining changed nothing served
    run = MlflowClient().get_run(weak.run_id)
    assert run.data.tags[PROMOTION_DECISION_TAG] == "rejected" and run.data.tags[CHAMPION_BEFORE_TAG] == "1"
    assert run.data.metrics[PREVIOUS_SCORE] == pytest.approx(weak.decision.champion_score)
    model, features = load_model(resolve_model("small_a", 2))  # the loser stays loadable
    assert features == FEATURES and model.estimator.n_estimators == 1

    strong = train_model("small_a", FEATURES, STRONG, "2026-11-03", data_prefix=prefix)
    assert strong.version == 3 and strong.decision.promote
    assert champion_version("small_a").version == 3

    served = predict_categories("small_a", "2026-11-23", data_prefix=prefix, spark=spark)
    manifest = _manifest(small_data, "2026-11-23")
    assert (served.model_version, manifest["model_version"], manifest["model_selector"]) == (3, 3, "champion")
    assert manifest["training_run_id"] == strong.run_id
    # One lookup from the output to its training run and prediction run.
    prediction_run = MlflowClient().get_run(manifest["prediction_run_id"])
    assert prediction_run.info.run_name == "prediction_2026-11-23"
    assert prediction_run.data.tags["model_version"] == "3" and prediction_run.data.tags[CLIENT_ID_TAG] == "small_a"
    assert prediction_run.data.metrics[ROWS_OUT_METRIC] == manifest["rows_written"] == 5 * 400
    assert MlflowClient().get_run(manifest["training_run_id"]).info.run_name == "training_2026-11-03"
    assert not non_parquet_in_dataset(small_data)  # the lineage is beside the dataset, not in it
    # Lineage means the same from anywhere: an absolute input path.
    assert Path(manifest["input_path"]).is_absolute() and Path(manifest["input_path"]).is_file()

    pinned = predict_categories("small_a", "2026-11-24", model_version=1, data_prefix=prefix, spark=spark)
    assert pinned.model_version == 1 and _manifest(small_data, "2026-11-24")["model_selector"] == "pinned"

    assert main(["set-champion", "--client_id=small_a", "--version=1"]) == 0
    assert "champion is now small_a_model version 1 (was version 3)" in capsys.readouterr().out
    rolled_back = predict_categories("small_a", "2026-11-25", data_prefix=prefix, spark=spark)
    assert rolled_back.model_version == 1 and _manifest(small_data, "2026-11-25")["training_run_id"] == first.run_id

    assert main(["list-models", "--client_id=small_a"]) == 0
    listing = capsys.readouterr().out
    assert "small_a_model versions" in listing and "rejected" in listing
    champion_rows = [line for line in listing.splitlines() if "│ yes" in line]
    assert len(champion_rows) == 1 and champion_rows[0].split("│")[1].strip() == "1"

    with pytest.raises(ModelNotFoundError, match=r"client 'small_a': model 'small_a_model' has no version 9: expected one of 1, 2, 3"):
        predict_categories("small_a", "2026-11-26", model_version=9, data_prefix=prefix, spark=spark)
    assert main(["set-champion", "--client_id=small_a", "--version=9"]) == 1
    assert champion_version("small_a").version == 1

    experiment = mlflow.get_experiment_by_name(experiment_name("small_a"))
    assert experiment.tags[CLIENT_ID_TAG] == "small_a"
    described = MlflowClient().get_model_version("small_a_model", "2")
    assert "Gate: rejected" in described.description and described.tags[TRAINING_DATE_TAG] == "2026-11-02"
