"""The record schema: names per client, and typed records to and from a run's tags and metrics (no MLflow)."""
import ast
from pathlib import Path

from categories_classification import records
from categories_classification.records import PredictionRecord, TrainingRecord, experiment_name, model_name


def test_names_per_client():
    assert model_name("client_0") == "client_0_model"
    assert experiment_name("client_0") == "categories_client_0"
    assert records.training_run_name("2026-11-23") == "training_2026-11-23"
    assert records.prediction_run_name("2026-11-23") == "prediction_2026-11-23"


def test_a_training_opens_with_its_tags_and_reads_back():
    record = TrainingRecord("c1", "2026-11-23", "/data/c1.csv.gz")
    tags = record.start_tags()
    assert tags == {"client_id": "c1", "training_date": "2026-11-23", "stage": "training", "data_path": "/data/c1.csv.gz"}
    assert TrainingRecord.from_run(tags, {}) == record
    failed = TrainingRecord("c1", "2026-11-23", "p", failure_reason="no rows")
    assert failed.start_tags()[records.FAILURE_REASON_TAG] == "no rows"
    assert TrainingRecord.from_run(failed.start_tags(), {}).failure_reason == "no rows"


def test_a_finished_training_reads_its_gate_and_dag_run():
    tags = {"client_id": "c1", "training_date": "2026-11-23", "promotion_decision": "promoted",
            "champion_version_before": "3", "airflow_dag_id": "c1_training", "airflow_dag_run_id": "manual_1"}
    metrics = {"test_top_5_accuracy": 0.9, "promotion_challenger_top_5_accuracy": 0.91,
               "promotion_champion_top_5_accuracy": 0.88}
    record = TrainingRecord.from_run(tags, metrics)
    assert record.promoted and record.champion_before == 3
    assert (record.test_top_5_accuracy, record.challenger_score, record.previous_score) == (0.9, 0.91, 0.88)
    assert (record.dag_id, record.dag_run_id) == ("c1_training", "manual_1")
    older = TrainingRecord.from_run({"champion_version_before": ""}, {})  # a first training, or an older run
    assert older.champion_before is None and older.previous_score is None and not older.promoted


def test_a_prediction_round_trips_through_its_metrics():
    record = PredictionRecord("c1", "2026-11-23", rows_out=500.0, rows_skipped=2.0, drift_max=0.3,
                              duration_seconds=4.0, model_version=2.0, drift_scores={"f0": 0.3, "f1": 0.01})
    metrics = record.metrics()
    assert metrics == {"rows_out": 500.0, "rows_skipped": 2.0, "duration_seconds": 4.0, "model_version": 2.0,
                       "drift_psi_f0": 0.3, "drift_psi_f1": 0.01, "drift_max": 0.3}
    assert PredictionRecord.from_run({"client_id": "c1", "inference_date": "2026-11-23"}, metrics) == record
    assert PredictionRecord("c1", "d").metrics() == {}  # nothing recorded: nothing logged


def test_the_record_schema_imports_the_standard_library_only():
    tree = ast.parse(Path(records.__file__).read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"dataclasses", "typing"}  # scripts and the Spark workers import it: no MLflow
