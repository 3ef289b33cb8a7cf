"""Lineage of a prediction: its MLflow run and its manifest.

Each client's prediction is an MLflow run ``prediction_<date>`` in the client's experiment, opened
before the Spark job (so that the manifest can name it) and closed before the output is swapped in
(``FINISHED`` with the rows and drift scores: a run that cannot be closed keeps its output out), or
when it is discarded (``FAILED``). The manifest (model, version, training and prediction runs, input,
rows, drift) is what ``output.swap_in`` stages before the data goes in and publishes right after, so
an output is never in place without its lineage.
The names this record uses (tags, metrics, manifest keys) are written once, below.
"""
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional, Sequence, Union

from categories_classification import drift, records
from categories_classification.errors import CategoriesError, TrackingError, connection_reason, error_text, service_lost
from categories_classification.paths import absolute
from categories_classification.prediction import checks
from categories_classification.prediction.checks import Stats
from categories_classification.prediction.plan import ClientPlan
from categories_classification.tracking import runs
from categories_classification.tracking.uri import display_tracking_uri

LOGGER = logging.getLogger(__name__)
SPARK_TAG = "spark"  # where the client was scored: a Spark Connect URL, a master, or engine.IN_PROCESS


@dataclass(frozen=True)
class PredictionRun:
    """A client's open prediction run, and where its Spark job runs (a shared Spark Connect service, or a master)."""

    client_id: str
    run_id: str
    spark: str


def _open_run(plan: ClientPlan, spark: str, experiment_id: Optional[str]) -> PredictionRun:
    run_id = runs.open_run(plan.client_id, records.prediction_run_name(plan.date), run_tags(plan, spark), experiment_id)
    return PredictionRun(plan.client_id, run_id, spark)


def run_tags(plan: ClientPlan, spark: str) -> dict[str, str]:
    """The tags of a client's prediction run (:func:`runs.open_run` adds where it runs: host and pid)."""
    return {records.CLIENT_ID_TAG: plan.client_id, records.INFERENCE_DATE_TAG: plan.date,
            records.STAGE_TAG: records.PREDICTION, "model_name": plan.ref.name,
            "model_version": str(plan.ref.version), "model_run_id": plan.ref.run_id, "model_selector": plan.selector,
            "output_path": plan.target,
            "drift_reference": "stored" if plan.drift.reference is not None else "none",
            "drift_threshold": f"{plan.drift.threshold:g}", SPARK_TAG: spark}


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
        SPARK_TAG: run.spark,  # where it ran: a shared Spark Connect service, a master, or in this process
        "features": list(plan.features),
        "rows_written": checks.count(stats, "written"),
        "rows_skipped": checks.count(stats, "skipped"),
        "drift": checks.drift_record(plan.drift, report),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def close_failed(run: PredictionRun, report: Optional[drift.DriftReport]) -> None:
    """End the run ``FAILED`` (a drift failure keeps its scores), tagged with where it was scored."""
    runs.close_run(run.client_id, run.run_id, report.metrics() if report is not None else {}, failed=True,
                   tags={SPARK_TAG: run.spark})


def close_finished(run: PredictionRun, plan: ClientPlan, stats: Stats, seconds: float,
                   report: Optional[drift.DriftReport]) -> None:
    """End the run ``FINISHED`` with its rows, duration, model version and drift scores."""
    metrics = {records.ROWS_OUT_METRIC: checks.count(stats, "written"),
               records.ROWS_SKIPPED_METRIC: checks.count(stats, "skipped"), records.DURATION_METRIC: seconds,
               records.MODEL_VERSION_METRIC: plan.ref.version, **(report.metrics() if report is not None else {})}
    # Where it ran, again: a client opened to be scored in this process may have gone to Spark after all.
    runs.close_run(run.client_id, run.run_id, metrics, tags={SPARK_TAG: run.spark})


class Bookkeeping:
    """The MLflow side of a (fleet) prediction, client by client: one client's failure is that client's.

    A store that stops answering fails the client whose call met it, with a line naming that
    client and the store; the clients after it fail at once with their own line (not one more
    bounded wait each), and their runs are left ``RUNNING`` for the next command to close
    (:func:`runs.close_abandoned_runs`: this process will be gone).
    """

    def __init__(self, date: str) -> None:
        self.date = date
        self.lost: Optional[str] = None  # why the store stopped answering, once it has

    def open_runs(self, plans: Sequence[ClientPlan], spark: str) -> list[Union[PredictionRun, CategoriesError]]:
        """One prediction run per plan (in order), after closing the runs a killed process left ``RUNNING``;
        client by client: each plan's run, or its error."""
        try:
            # A fleet's experiments in one search, for both (one client: its own lookups).
            ids = [plan.client_id for plan in plans]
            experiments = runs.fleet_experiments(ids) if len(ids) > 1 else {}
            runs.close_abandoned_runs(*ids, experiment_ids=list(experiments.values()) if len(ids) > 1 else None)
        except TrackingError as exc:
            return [self.client_error(plan.client_id, exc, "before the prediction") for plan in plans]
        opened: list[Union[PredictionRun, CategoriesError]] = []
        for plan in plans:
            try:
                opened.append(self._check() or _open_run(plan, spark, experiments.get(plan.client_id)))
            except TrackingError as exc:
                opened.append(self.client_error(plan.client_id, exc, "before the prediction"))
        return opened

    def close_finished(self, run: PredictionRun, plan: ClientPlan, stats: Stats, seconds: float,
                       report: Optional[drift.DriftReport]) -> Optional[CategoriesError]:
        """:func:`close_finished`; the client's error if its run could not be closed (its output must not go in)."""
        try:
            self._check()
            close_finished(run, plan, stats, seconds, report)
        except TrackingError as exc:
            return self.client_error(run.client_id, exc, "while recording the prediction's lineage")
        return None

    def close_failed(self, run: PredictionRun, report: Optional[drift.DriftReport]) -> None:
        """:func:`close_failed` if the store answers; else the run stays ``RUNNING`` for the next command."""
        if self.lost is None:
            try:
                close_failed(run, report)
                return
            except TrackingError as exc:
                self.client_error(run.client_id, exc, "")
        LOGGER.info("client %s: run %s left RUNNING (MLflow lost: %s); the next prediction closes it",
                    run.client_id, run.run_id, self.lost)

    def _check(self) -> None:
        """Raise at once for a store already lost (nothing to wait for)."""
        if self.lost is not None:
            raise TrackingError(f"MLflow at {display_tracking_uri()} failed: {self.lost}")

    def client_error(self, client_id: str, error: TrackingError, when: str) -> CategoriesError:
        """The client's one line for ``error``; a lost connection marks the store lost for the clients after."""
        reason = self.lost or connection_reason(error_text(error.__cause__ or error))
        if reason is None:
            return error if error.client_id == client_id else TrackingError(error.detail, client_id)
        self.lost = reason
        return service_lost(client_id, f"MLflow at {display_tracking_uri()}", when, reason, self.date)
