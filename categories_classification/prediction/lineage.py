"""Lineage of a prediction: its MLflow run and its manifest.

Each client's prediction is an MLflow run ``prediction_<date>`` in the client's experiment, opened
before the Spark job (so that the manifest can name it) and closed after the output is swapped in
or discarded: ``FINISHED`` with the rows and drift scores, or ``FAILED``. The manifest (model,
version, training and prediction runs, input, rows, drift) is what ``output.swap_in`` stages before
the data goes in and publishes right after, so an output is never in place without its lineage.
The names this record uses (tags, metrics, manifest keys) are written once, below.
"""
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional, Sequence

from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient

from categories_classification import drift, registry
from categories_classification.paths import absolute
from categories_classification.prediction import checks
from categories_classification.prediction.checks import Stats
from categories_classification.prediction.plan import ClientPlan

RUN_NAME = "prediction_{date}"
STAGE = "prediction"
# Metrics of a finished prediction run (besides drift's drift_psi_<feature> and drift_max).
ROWS_OUT, ROWS_SKIPPED, DURATION, MODEL_VERSION = "rows_out", "rows_skipped", "duration_seconds", "model_version"


@dataclass(frozen=True)
class PredictionRun:
    """A client's open prediction run, and where its Spark job runs (a shared Spark Connect service, or a master)."""

    client_id: str
    run_id: str
    spark: str


def open_runs(plans: Sequence[ClientPlan], spark: str) -> list[PredictionRun]:
    """One prediction run per plan (in order), after closing the runs a killed process left ``RUNNING``."""
    registry.close_abandoned_runs(*(plan.client_id for plan in plans))
    return [_open_run(plan, spark) for plan in plans]


def _open_run(plan: ClientPlan, spark: str) -> PredictionRun:
    client = MlflowClient()
    with registry.tracking_errors(plan.client_id):
        experiment_id = registry.ensure_experiment(plan.client_id)
        run = client.create_run(experiment_id, run_name=RUN_NAME.format(date=plan.date), tags=run_tags(plan, spark))
    return PredictionRun(plan.client_id, run.info.run_id, spark)


def run_tags(plan: ClientPlan, spark: str) -> dict[str, str]:
    """The tags of a client's prediction run."""
    return {"client_id": plan.client_id, "inference_date": plan.date, "stage": STAGE, "model_name": plan.ref.name,
            "model_version": str(plan.ref.version), "model_run_id": plan.ref.run_id, "model_selector": plan.selector,
            "output_path": plan.target, registry.HOST_TAG: socket.gethostname(), registry.PID_TAG: str(os.getpid()),
            "drift_reference": "stored" if plan.drift.reference is not None else "none",
            "drift_threshold": f"{plan.drift.threshold:g}", "spark": spark}


def manifest(plan: ClientPlan, run: PredictionRun, stats: Stats, report: Optional[drift.DriftReport]) -> dict[str, Any]:
    """The lineage record of a client's output (``_manifests/client_id=<id>/date=<date>.json``)."""
    return {
        "client_id": plan.client_id,
        "inference_date": plan.date,
        "model_name": plan.ref.name,
        "model_version": plan.ref.version,
        "model_uri": plan.ref.uri,
        "model_selector": plan.selector,
        "training_run_id": plan.ref.run_id,
        "prediction_run_id": run.run_id,
        "tracking_uri": registry.display_tracking_uri(),
        "input_path": absolute(plan.source),
        "spark": run.spark,  # where it ran: a shared Spark Connect service, or a master
        "features": list(plan.features),
        "rows_written": checks.count(stats, "written"),
        "rows_skipped": checks.count(stats, "skipped"),
        "drift": checks.drift_record(plan.drift, report),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def close_failed(run: PredictionRun, report: Optional[drift.DriftReport]) -> None:
    """End the run ``FAILED`` (a drift failure keeps its scores)."""
    _end_run(run, RunStatus.FAILED, report.metrics() if report is not None else {})


def close_finished(run: PredictionRun, plan: ClientPlan, stats: Stats, seconds: float,
                   report: Optional[drift.DriftReport]) -> None:
    """End the run ``FINISHED`` with its rows, duration, model version and drift scores."""
    metrics = {ROWS_OUT: checks.count(stats, "written"), ROWS_SKIPPED: checks.count(stats, "skipped"),
               DURATION: seconds, MODEL_VERSION: plan.ref.version, **(report.metrics() if report is not None else {})}
    _end_run(run, RunStatus.FINISHED, metrics)


def _end_run(run: PredictionRun, status: int, metrics: dict[str, float]) -> None:
    client = MlflowClient()
    now = int(time.time() * 1000)
    with registry.tracking_errors(run.client_id):
        if metrics:
            client.log_batch(run.run_id, metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()])
        client.set_terminated(run.run_id, RunStatus.to_string(status), end_time=now)
