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
    assert record.dag_run == ("c1_training", "manual_1")
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


def test_the_names_stored_in_mlflow_do_not_change():
    # Runs and versions already in a store carry these names: the fleet view, the notebook and
    # champion-from-run read them. Renaming one is a migration, not a refactoring.
    stored = {
        "CHAMPION": "champion", "MODEL_ARTIFACT": "model", "EVALUATION_ARTIFACTS": "evaluation",
        "MODEL_CHOICE_FILE": "model_choice.json", "TOP_K_FILE": "top_k_accuracy.json",
        "RELIABILITY_FILE": "reliability.json", "COMPANION_DIGEST_SUFFIX": ".sha256",
        "CLIENT_ID_TAG": "client_id", "STAGE_TAG": "stage", "TRAINING": "training", "PREDICTION": "prediction",
        "HOST_TAG": "host", "PID_TAG": "pid", "FAILURE_REASON_TAG": "failure_reason",
        "DAG_ID_TAG": "airflow_dag_id", "DAG_RUN_ID_TAG": "airflow_dag_run_id",
        "TRAINING_DATE_TAG": "training_date", "DATA_PATH_TAG": "data_path",
        "PROMOTION_DECISION_TAG": "promotion_decision", "PROMOTED": "promoted",
        "PROMOTION_REASON_TAG": "promotion_reason", "CHAMPION_BEFORE_TAG": "champion_version_before",
        "MODEL_FAMILY_PARAM": "model_family", "TEST_TOP_5_METRIC": "test_top_5_accuracy",
        "TEST_ACCURACY_METRIC": "test_accuracy", "MODEL_MEMORY_METRIC": "model_memory_bytes",
        "MODEL_SIZE_METRIC": "model_size_bytes", "CHALLENGER_SCORE": "promotion_challenger_top_5_accuracy",
        "PREVIOUS_SCORE": "promotion_champion_top_5_accuracy", "PROMOTION_TOLERANCE_METRIC": "promotion_tolerance",
        "INFERENCE_DATE_TAG": "inference_date", "ROWS_OUT_METRIC": "rows_out", "ROWS_SKIPPED_METRIC": "rows_skipped",
        "DURATION_METRIC": "duration_seconds", "MODEL_VERSION_METRIC": "model_version",
        "DRIFT_METRIC_PREFIX": "drift_psi_", "DRIFT_MAX_METRIC": "drift_max",
    }
    assert {name: getattr(records, name) for name in stored} == stored
