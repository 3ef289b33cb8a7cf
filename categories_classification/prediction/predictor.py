"""Prediction stage: plan each client -> one Spark job over every client's rows -> checks -> lineage and swap.

:func:`predict_categories` scores one client; :func:`predict_clients` scores many in as few
Spark jobs as their files allow (the "many models" pattern: each row is scored by its own
client's model, models shipped once as files and cached per worker). Both are the same code:
one client is a fleet of one. The steps: :mod:`.plan` (version, model file, header, drift
reference), :mod:`.job` (the Spark job), :mod:`.checks` (pure verdicts over the job's counts),
:mod:`.lineage` (the MLflow run, the manifest) and :mod:`.output` (the atomic swap). How the
single gzip partition is scored, the duplicate ``product_id`` rule and the atomic swap are
explained in docs/prediction.md.
"""
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional, Sequence, Union

from py4j.protocol import Py4JError
from pyspark.errors import PySparkException
from pyspark.sql import SparkSession

from categories_classification.config import validate_client_id
from categories_classification.errors import CategoriesError
from categories_classification.paths import data_prefix as resolve_prefix
from categories_classification.paths import normalize_date
from categories_classification.prediction import checks, engine, in_process, job, lineage, output
from categories_classification.prediction.files import Files, LocalFiles, files_for
from categories_classification.prediction.date_lock import date_locks
from categories_classification.prediction.checks import DriftError
from categories_classification.prediction.plan import ClientPlan, plan_clients
from categories_classification.prediction.spark import describe, start_session
from categories_classification.tracking.registry import ModelRef
from categories_classification.tracking.store import configure_tracking

__all__ = ["DriftError", "Outcome", "PredictionResult", "predict_categories", "predict_clients"]
LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictionResult:
    """Where the predictions went and which model made them."""

    client_id: str
    inference_date: str
    output_path: str
    model: ModelRef
    rows_written: int
    rows_skipped: int
    seconds: float
    prediction_run_id: str = ""
    drift: Mapping[str, Any] = field(default_factory=dict)  # the manifest's drift object

    @property
    def model_name(self) -> str:
        """The registered model's name."""
        return self.model.name

    @property
    def model_version(self) -> int:
        """The version that scored the input."""
        return self.model.version

    @property
    def run_id(self) -> str:
        """The training run of that version."""
        return self.model.run_id


Outcome = Union[PredictionResult, Exception]


def predict_categories(client_id: str, inference_date: str, *, model_version: Optional[int] = None,
                       data_prefix: Optional[str] = None, spark: Optional[SparkSession] = None,
                       drift_threshold: Optional[float] = None, fail_on_drift: bool = False) -> PredictionResult:
    """Score the client's prediction file with its champion (or ``model_version``); write top-5 parquet.

    The output folder holds parquet files only; its lineage (model name, version, training run,
    prediction run, time, drift scores) goes to ``_manifests/client_id=<id>/date=<date>.json``
    once the files are swapped in (``paths.manifest_path``); the prediction itself is an MLflow
    run ``prediction_<date>`` in the client's experiment. Input drift over ``drift_threshold``
    (default ``config.DEFAULT_DRIFT_THRESHOLD``) is warned about, or with ``fail_on_drift`` is a
    :class:`DriftError` that writes nothing.
    """
    client_id = validate_client_id(client_id)
    thresholds = {client_id: drift_threshold} if drift_threshold is not None else {}
    outcome = predict_clients([client_id], inference_date, model_versions={client_id: model_version},
                              data_prefix=data_prefix, spark=spark, drift_thresholds=thresholds,
                              fail_on_drift=fail_on_drift)[client_id]
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def predict_clients(client_ids: Sequence[str], inference_date: str, *,
                    model_versions: Optional[Mapping[str, Optional[int]]] = None, data_prefix: Optional[str] = None,
                    spark: Optional[SparkSession] = None, drift_thresholds: Optional[Mapping[str, float]] = None,
                    fail_on_drift: bool = False) -> dict[str, Outcome]:
    """Predict every client of ``client_ids`` for one date; a client's failure is its outcome, not raised.

    Each client is served its champion, or the version in ``model_versions``. Clients whose
    model and input file are in order are scored together; if that job fails, each is scored
    alone, so that one client's bad file fails that client only. Each client's input is compared
    with its version's drift reference in the same pass (PSI per feature); a client over its
    threshold in ``drift_thresholds`` (default ``config.DEFAULT_DRIFT_THRESHOLD``) is warned
    about, or with ``fail_on_drift`` fails with a :class:`DriftError` and writes nothing.
    """
    started = time.perf_counter()
    date = normalize_date(inference_date, "inference_date")
    prefix = resolve_prefix(data_prefix)
    # A small fleet on this machine is scored in this process (no JVM); else Spark starts (seconds)
    # while the registry and the model cache are read.
    here = spark is None and engine.in_this_process(client_ids, prefix)
    session = _Spark(spark, None if spark is not None or here else start_session())
    configure_tracking()
    plans, outcomes = plan_clients(client_ids, date, prefix, model_versions or {}, drift_thresholds or {}, fail_on_drift)
    if plans:
        _predict_planned(session, prefix, plans, outcomes, started)
    return {client_id: outcomes[client_id] for client_id in client_ids}


class _Spark:
    """The Spark session of a command: given, starting, or started only when a client needs it."""

    def __init__(self, given: Optional[SparkSession], starting: Optional["Future[SparkSession]"]) -> None:
        self._session, self._starting = given, starting
        self.in_process = given is None and starting is None

    def get(self) -> SparkSession:
        """The session (started now if nothing started it)."""
        if self._session is None:
            self._session = (self._starting or start_session()).result()
        return self._session


def _predict_planned(spark: _Spark, prefix: str, plans: list[ClientPlan], outcomes: dict[str, Outcome],
                     started: float) -> None:
    """Open the planned clients' runs, score them in one job, then check, close and swap each (into ``outcomes``)."""
    files = LocalFiles() if spark.in_process else files_for(spark.get(), prefix)
    book = lineage.Bookkeeping(plans[0].date)
    # One run per client and date: a client whose date another run holds fails alone (its outcome).
    with date_locks(files, plans, outcomes) as held:
        ready = []
        where = engine.IN_PROCESS if spark.in_process else describe(spark.get())
        for plan, run in zip(held, book.open_runs(held, where) if held else []):
            if isinstance(run, Exception):
                outcomes[plan.client_id] = run
            else:
                ready.append((plan, run))
        scored = _score(spark, files, [plan for plan, _ in ready]) if ready else []
        for (plan, run), (result, scored_by) in zip(ready, scored):
            run = replace(run, spark=scored_by)
            outcomes[plan.client_id] = _finish(spark, files, book, Step(plan, run, result, started))


def _score(spark: _Spark, files: Files, plans: list[ClientPlan]) -> list[tuple[job.Scored, str]]:
    """Every plan scored, and where: in this process where it can be, the others (or all) in one Spark job."""
    here = in_process.score(files, plans) if spark.in_process else [None] * len(plans)
    left = [plan for plan, result in zip(plans, here) if result is None]
    if not left:
        return [(result, engine.IN_PROCESS) for result in here if result is not None]
    try:
        session = spark.get()
    except CLIENT_FAULTS as exc:  # e.g. no Java here: the clients scored in this process go on
        return [(result or job.Scored(error=exc), engine.IN_PROCESS) for result in here]
    by_spark, where = iter(job.score(session, files, left, plans[0].date)), describe(session)
    return [(result, engine.IN_PROCESS) if result is not None else (next(by_spark), where) for result in here]


@dataclass(frozen=True)
class Step:
    """One client's part of the job: its plan, its open run, what the job did for it, when the command started."""

    plan: ClientPlan
    run: lineage.PredictionRun
    scored: job.Scored
    started: float


# What one client's checks, bookkeeping and swap may raise: that client's failure, never the others'.
CLIENT_FAULTS = (CategoriesError, OSError, PySparkException, Py4JError)


def _finish(spark: _Spark, files: Files, book: lineage.Bookkeeping, step: Step) -> Outcome:
    """Check what the job saw of this client; close its run, then swap its output in; or discard it."""
    plan, run, scored = step.plan, step.run, step.scored
    error, verdict = scored.error, checks.DriftVerdict()
    try:
        if error is None:
            verdict = _verify(spark, plan, scored.stats)
            error = verdict.problem
        if error is None:
            # The lineage first: an output goes in only once its run is FINISHED.
            error = book.close_finished(run, plan, scored.stats, time.perf_counter() - step.started, verdict.report)
            if error is None:
                output.swap_in(files, plan.place, scored.token, lineage.manifest(plan, run, scored.stats, verdict.report))
    except CLIENT_FAULTS as exc:
        error = exc
    if error is not None:
        output.drop_staging(files, scored.staging, CLIENT_FAULTS)
        book.close_failed(run, verdict.report)
        return error
    written, skipped = checks.count(scored.stats, "written"), checks.count(scored.stats, "skipped")
    if skipped:
        LOGGER.warning("client %s: skipped %d product(s) with a missing feature value in %s", plan.client_id, skipped,
                       plan.source)
    return PredictionResult(plan.client_id, plan.date, plan.target, plan.ref, written, skipped,
                            time.perf_counter() - step.started, run.run_id, checks.drift_record(plan.drift, verdict.report))


def _verify(spark: _Spark, plan: ClientPlan, stats: checks.Stats) -> checks.DriftVerdict:
    """Raise the client's input problem (a row that did not parse, a duplicate id); else its drift verdict.

    A drift over the threshold is the verdict's problem (with ``fail_on_drift``) or a warning logged here.
    """
    problem = checks.malformed_problem(plan.client_id, plan.source, stats)
    if problem is not None:
        raise problem
    if checks.may_have_duplicates(stats):
        job.raise_on_duplicates(plan.client_id, plan.source, job.input_ids(spark.get(), plan))
    verdict = checks.drift_verdict(plan.client_id, plan.source, plan.model_label, plan.drift, stats, plan.features)
    if verdict.report is None:
        LOGGER.info("client %s: no drift check (%s)", plan.client_id, plan.drift.missing)
    elif verdict.warning:
        LOGGER.warning("client %s: %s; the predictions are written, check the input", plan.client_id, verdict.warning)
    return verdict
