"""Drift on every prediction, through the real predictor (local Spark) and a real SQLite MLflow store.

Another sample of the generator is not flagged; one feature shifted by 2 standard deviations is,
by name, in the manifest, the run's metrics and a warning; ``fail_on_drift`` writes nothing and
keeps the previous output; a version registered without a reference predicts as before.
"""
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Optional

import mlflow
import pandas as pd
import pytest
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from sklearn.ensemble import RandomForestClassifier

from categories_classification.records import DRIFT_MAX_METRIC
from categories_classification.tracking.artifacts import fetch_model_and_companion
from categories_classification.tracking.flavor import log_and_register
from categories_classification.tracking.registry import resolve_model, set_champion
from categories_classification.tracking.runs import ensure_experiment
from categories_classification.drift import REFERENCE_FILE
from categories_classification.prediction.predictor import DriftError, predict_categories
from categories_classification.training.trainer import drift_reference
from scripts.generate_example_data import ClientSpec
from tests.helpers import (DATE, FEATURES, client_entry, output_folder, read_manifest, run_cli, shift_prediction_feature,
                           staging_leftovers, stored_model_file, write_and_train, write_config)

pytestmark = pytest.mark.slow
CLIENTS = (ClientSpec("drift_a", 401, n_train=900, n_predict=600, n_categories=8),
           ClientSpec("drift_b", 402, n_train=700, n_predict=500, n_categories=5))
SHIFTED = "f2"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, module_tracking_store: Path) -> Path:  # pylint: disable=unused-argument
    """Both clients generated and trained once (version 1, champion, with a drift reference)."""
    return write_and_train(CLIENTS, tmp_path_factory.mktemp("drift"), n_estimators=8)


def _copy(trained: Path, tmp_path: Path, shift: tuple[str, ...] = ()) -> Path:
    prefix = tmp_path / "data"
    shutil.copytree(trained, prefix, ignore=shutil.ignore_patterns("products_categories"))
    for client_id in shift:
        shift_prediction_feature(prefix, client_id, SHIFTED, 2.0)
    return prefix


def _manifest(prefix: Path, client_id: str, date: str = DATE) -> dict:
    return read_manifest(prefix, client_id, date)


def _files(prefix: Path, client_id: str) -> dict[str, str]:
    return {str(path.relative_to(prefix)): hashlib.sha256(path.read_bytes()).hexdigest()
            for folder in (output_folder(prefix, client_id).parent, prefix / "_manifests" / f"client_id={client_id}")
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.usefixtures("trained")
def test_the_reference_is_stored_beside_the_model_file():
    ref = resolve_model("drift_a")
    _, features, text = fetch_model_and_companion(ref, REFERENCE_FILE)
    reference = json.loads(text)
    assert sorted(reference["features"]) == sorted(features) == FEATURES
    assert reference["rows"] == 720  # the training split: 80% of 900
    assert all(len(entry["expected"]) == 10 for entry in reference["features"].values())


def test_another_sample_of_the_same_data_is_not_flagged(trained, spark, tmp_path, caplog):
    prefix = _copy(trained, tmp_path)
    with caplog.at_level(logging.WARNING):
        result = predict_categories("drift_a", DATE, data_prefix=str(prefix), spark=spark)
    record = _manifest(prefix, "drift_a")["drift"]
    assert record == result.drift
    assert record["reference"] and not record["over_threshold"] and record["features_over"] == []
    assert sorted(record["scores"]) == FEATURES and record["max"] < 0.1 and record["threshold"] == 0.2
    assert record["rows"] == 600
    run = MlflowClient().get_run(result.prediction_run_id)
    assert run.data.metrics[DRIFT_MAX_METRIC] == pytest.approx(record["max"])
    assert {key: run.data.metrics[f"drift_psi_{key}"] for key in FEATURES} == pytest.approx(record["scores"])
    assert run.data.tags["drift_reference"] == "stored" and run.data.tags["drift_threshold"] == "0.2"
    assert "drifted" not in caplog.text


def test_a_shifted_feature_is_flagged_by_name_warned_about_and_written(trained, spark, tmp_path, caplog):
    prefix = _copy(trained, tmp_path, shift=("drift_a",))
    with caplog.at_level(logging.WARNING):
        result = predict_categories("drift_a", DATE, data_prefix=str(prefix), spark=spark)
    record = _manifest(prefix, "drift_a")["drift"]
    assert record["over_threshold"] and record["features_over"] == [SHIFTED] and record["max"] == record["scores"][SHIFTED]
    assert record["scores"][SHIFTED] > 1 and all(record["scores"][name] < 0.1 for name in FEATURES if name != SHIFTED)
    assert result.rows_written == 5 * 600  # a warning, not an error
    assert MlflowClient().get_run(result.prediction_run_id).data.metrics[DRIFT_MAX_METRIC] > 1
    assert re.search(rf"client drift_a: file \S+data_predict.csv.gz: the input drifted from drift_a_model version 1's "
                     rf"training data: {SHIFTED} PSI \d+\.\d{{3}} over the threshold 0.2", caplog.text), caplog.text


def test_fail_on_drift_writes_nothing_and_keeps_the_previous_output(trained, spark, tmp_path):
    prefix = _copy(trained, tmp_path)
    predict_categories("drift_a", DATE, data_prefix=str(prefix), spark=spark, fail_on_drift=True)  # no drift: written
    before = _files(prefix, "drift_a")
    shift_prediction_feature(prefix, "drift_a", SHIFTED, 2.0)
    with pytest.raises(DriftError) as raised:
        predict_categories("drift_a", DATE, data_prefix=str(prefix), spark=spark, fail_on_drift=True)
    message = str(raised.value)
    assert re.fullmatch(
        rf"client 'drift_a': file \S+/prediction/client_id=drift_a/data_predict.csv.gz: the input drifted from "
        rf"drift_a_model version 1's training data: {SHIFTED} PSI \d+\.\d{{3}} over the threshold 0.2 "
        r"\(fail_on_drift\); nothing written, the output of this date is left as it was", message), message
    assert _files(prefix, "drift_a") == before and not staging_leftovers(prefix, "drift_a")  # byte for byte
    runs = MlflowClient().search_runs([mlflow.get_experiment_by_name("categories_drift_a").experiment_id],
                                      order_by=["attributes.start_time DESC"], max_results=1)
    assert runs[0].info.status == "FAILED" and runs[0].data.metrics[DRIFT_MAX_METRIC] > 1  # the scores stay on record
    # A higher threshold lets the same input through.
    result = predict_categories("drift_a", DATE, data_prefix=str(prefix), spark=spark, fail_on_drift=True,
                                drift_threshold=50.0)
    assert not result.drift["over_threshold"] and result.drift["threshold"] == 50.0


def test_a_version_without_a_reference_predicts_and_records_no_reference(trained, spark, tmp_path):
    prefix = _copy(trained, tmp_path)
    (prefix / "prediction" / "client_id=legacy").symlink_to(prefix / "prediction" / "client_id=drift_b")
    _register_without_reference("legacy", prefix / "train" / "client_id=drift_b" / "data_train.csv.gz")
    result = predict_categories("legacy", DATE, data_prefix=str(prefix), spark=spark, fail_on_drift=True)
    assert result.rows_written == 5 * 500
    assert _manifest(prefix, "legacy")["drift"] == result.drift == {
        "reference": False, "status": "no reference: version 1 was trained before drift references were stored"}
    run = MlflowClient().get_run(result.prediction_run_id)
    assert not [key for key in run.data.metrics if key.startswith("drift")]
    assert run.data.tags["drift_reference"] == "none"


def test_a_reference_changed_after_registration_is_not_trusted(trained, spark, tmp_path, caplog):
    prefix = _copy(trained, tmp_path)
    (prefix / "prediction" / "client_id=tampered").symlink_to(prefix / "prediction" / "client_id=drift_b")
    rows = pd.read_csv(prefix / "train" / "client_id=drift_b" / "data_train.csv.gz")
    _register_without_reference("tampered", prefix / "train" / "client_id=drift_b" / "data_train.csv.gz",
                                {REFERENCE_FILE: json.dumps(drift_reference(rows[FEATURES]))})
    stored = stored_model_file(mlflow.get_tracking_uri(), "tampered", 1).parent / REFERENCE_FILE
    reference = json.loads(stored.read_text(encoding="utf-8"))
    reference["rows"] += 1  # still a well-formed reference: only the digest tells
    stored.write_text(json.dumps(reference), encoding="utf-8")

    with caplog.at_level(logging.WARNING):
        result = predict_categories("tampered", DATE, data_prefix=str(prefix), spark=spark, fail_on_drift=True)

    assert result.rows_written == 5 * 500  # the model file is intact: the prediction is served
    assert result.drift["reference"] is False
    assert "does not match its digest (expected drift_reference.json.sha256" in result.drift["status"]
    assert "drift not checked" in caplog.text


def _register_without_reference(client_id: str, training_file: Path, companions: Optional[dict] = None) -> None:
    """A version as the trainer registered it before drift references existed (no companion file, unless
    ``companions`` are given), made champion."""
    rows = pd.read_csv(training_file)
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(rows[FEATURES], rows["category_id"])
    example = rows[FEATURES].head(5)
    with mlflow.start_run(experiment_id=ensure_experiment(client_id)):
        ref = log_and_register(client_id, model, example, infer_signature(example, model.predict(example)),
                                        companions=companions)
    set_champion(client_id, ref.version)


def test_the_commands_pass_thresholds_and_fail_on_drift(trained, tmp_path):
    prefix = _copy(trained, tmp_path, shift=("drift_a", "drift_b"))
    config = write_config(tmp_path / "clients.yaml", {"drift_a": client_entry(),
                                                       "drift_b": client_entry(drift_threshold=50)})
    env = {"DATA_PREFIX": str(prefix), "CONFIG_FILE": str(config), "SPARK_MASTER": "local[2]"}
    fleet = run_cli(["predict-all", f"--inference_date={DATE}", "--fail_on_drift"], _environ(env))
    assert fleet.returncode == 1, fleet.stderr
    errors = [line for line in fleet.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"Error: client 'drift_a': file {prefix}" in errors[0]
    assert f"{SHIFTED} PSI" in errors[0] and "over the threshold 0.2 (fail_on_drift)" in errors[0]
    assert not output_folder(prefix, "drift_a").exists()
    assert _manifest(prefix, "drift_b")["drift"]["threshold"] == 50  # the config's threshold, in the same job

    single = run_cli(["predictor", "--client_id=drift_a", f"--inference_date={DATE}", "--drift_threshold=0.15"],
                     _environ(env))
    assert single.returncode == 0, single.stderr
    assert re.search(rf"drift max PSI \d+\.\d{{3}} \(threshold 0.15, DRIFTED: {SHIFTED}\)", single.stdout), single.stdout
    assert _manifest(prefix, "drift_a")["drift"]["threshold"] == 0.15


def _environ(extra: dict[str, str]) -> dict[str, str]:
    return dict(os.environ, **extra)  # MLFLOW_TRACKING_URI: the module's store
