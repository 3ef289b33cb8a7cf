"""The names a prediction records (run tags, manifest keys): built from a plan, no MLflow store, no Spark."""
from pathlib import Path

from categories_classification.prediction import lineage, output
from categories_classification.prediction.checks import DriftCheck
from categories_classification.prediction.plan import ClientPlan
from categories_classification.records import prediction_run_name
from categories_classification.tracking.registry import ModelRef

PREFIX = "/data"
DATE = "2026-11-23"


def _plan(check=DriftCheck(0.2, missing="version 3 was trained before drift references were stored")):
    ref = ModelRef("c1", "c1_model", 3, "0123456789abcdef")
    return ClientPlan("c1", DATE, f"{PREFIX}/prediction/client_id=c1/data_predict.csv.gz", output.placement("c1", DATE, PREFIX),
                      ref, "champion", Path("/tmp/c1_model-v3-0123456789ab.skops"), ("f0", "f1"),
                      ("product_id", "f0", "f1"), check)


def test_the_prediction_run_is_tagged_as_fleet_status_and_the_notebook_read_it():
    plan = _plan()
    assert lineage.run_tags(plan, "local[*]") == {
        "client_id": "c1", "inference_date": DATE, "stage": "prediction", "model_name": "c1_model",
        "model_version": "3", "model_run_id": "0123456789abcdef", "model_selector": "champion",
        "output_path": plan.target, "drift_reference": "none", "drift_threshold": "0.2", "spark": "local[*]"}
    assert prediction_run_name(DATE) == "prediction_2026-11-23"


def test_the_manifest_names_model_runs_input_rows_and_drift(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:secret@mlflow.example:5000")
    plan = _plan()
    run = lineage.PredictionRun("c1", "feedbeef", "sc://127.0.0.1:15002")
    stats = [{"written": 10, "skipped": 1}, {"written": 5, "skipped": 0}]
    manifest = lineage.manifest(plan, run, stats, None)
    assert list(manifest) == ["client_id", "inference_date", "model_name", "model_version", "model_uri", "model_selector",
                              "training_run_id", "prediction_run_id", "tracking_uri", "input_path", "spark", "features",
                              "rows_written", "rows_skipped", "drift", "created_at"]
    assert {key: manifest[key] for key in ("model_uri", "training_run_id", "prediction_run_id", "tracking_uri", "spark",
                                           "features", "rows_written", "rows_skipped", "drift")} == {
        "model_uri": "models:/c1_model/3", "training_run_id": "0123456789abcdef", "prediction_run_id": "feedbeef",
        "tracking_uri": "http://***@mlflow.example:5000", "spark": "sc://127.0.0.1:15002", "features": ["f0", "f1"],
        "rows_written": 15, "rows_skipped": 1,
        "drift": {"reference": False, "status": "no reference: version 3 was trained before drift references were stored"}}
