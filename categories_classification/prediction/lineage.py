"""Lineage of a prediction: its MLflow run and its manifest.

Each client's prediction is an MLflow run ``prediction_<date>`` in the client's experiment, opened
before the Spark job (so that the manifest can name it) and closed after the output is swapped in
or discarded: ``FINISHED`` with the rows and drift scores, or ``FAILED``. The manifest (model,
version, training and prediction runs, input, rows, drift) is what ``output.swap_in`` stages before
the data goes in and publishes right after, so an output is never in place without its lineage.
The names this record uses (tags, metrics, manifest keys) are written once, below.
"""
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional, Sequence

from categories_classification import drift, records
from categories_classification.paths import absolute
from categories_classification.prediction import checks
from categories_classification.prediction.checks import Stats
from categories_classification.prediction.plan import ClientPlan
from categories_classification.tracking import runs
from categories_classification.tracking.uri import display_tracking_uri



@dataclass(frozen=True)
class PredictionRun:
    """A client's open prediction run, and where its Spark job runs (a shared Spark Connect service, or a master)."""

    client_id: str
    run_id: str
    spark: str


def open_runs(plans: Sequence[ClientPlan], spark: str) -> list[PredictionRun]:
    """One prediction run per plan (in order), after closing the runs a killed process left ``RUNNING``."""
    runs.close_abandoned_runs(*(plan.client_id for plan in plans))
    return [_open_run(plan, spark) for plan in plans]


def _open_run(plan: ClientPlan, spark: str) -> PredictionRun:
    run_id = runs.open_run(plan.client_id, records.prediction_run_name(plan.date), run_tags(plan, spark))
    return PredictionRun(plan.client_id, run_id, spark)


def run_tags(plan: ClientPlan, spark: str) -> dict[str, str]:
    """The tags of a client's prediction run (:func:`runs.open_run` adds where it runs: host and pid)."""
    return {records.CLIENT_ID_TAG: plan.client_id, records.INFERENCE_DATE_TAG: plan.date,
            records.STAGE_TAG: records.PREDICTION, "model_name": plan.ref.name,
            "model_version": str(plan.ref.version), "model_run_id": plan.ref.run_id, "model_selector": plan.selector,
            "output_path": plan.target,
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
        "tracking_uri": display_tracking_uri(),
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
    runs.close_run(run.client_id, run.run_id, report.metrics() if report is not None else {}, failed=True)


def close_finished(run: PredictionRun, plan: ClientPlan, stats: Stats, seconds: float,
                   report: Optional[drift.DriftReport]) -> None:
    """End the run ``FINISHED`` with its rows, duration, model version and drift scores."""
    metrics = {records.ROWS_OUT_METRIC: checks.count(stats, "written"),
               records.ROWS_SKIPPED_METRIC: checks.count(stats, "skipped"), records.DURATION_METRIC: seconds,
               records.MODEL_VERSION_METRIC: plan.ref.version, **(report.metrics() if report is not None else {})}
    runs.close_run(run.client_id, run.run_id, metrics)
