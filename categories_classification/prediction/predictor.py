"""Prediction stage: resolve each client's model -> one Spark job over every client's rows -> atomic writes.

:func:`predict_categories` scores one client; :func:`predict_clients` scores many in as few
Spark jobs as their files allow (the "many models" pattern: each row is scored by its own
client's model, models shipped once as files and cached per worker). Both are the same code:
one client is a fleet of one. How the single gzip partition is scored, the duplicate
``product_id`` rule and the atomic swap are explained in the README ("How prediction works").
"""
import gzip
import json
import logging
import math
import os
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import reduce
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from py4j.protocol import Py4JJavaError
from pyspark.errors import AnalysisException, PySparkException
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import from_arrow_schema

from categories_classification import drift
from categories_classification.records import CHAMPION, prediction_run_name
from categories_classification.tracking.artifacts import companion_problem, fetch_model_and_companion
from categories_classification.tracking.registry import ModelRef, resolve_model
from categories_classification.tracking.runs import close_abandoned_runs, close_run, open_run
from categories_classification.tracking.store import configure_tracking
from categories_classification.tracking.uri import display_tracking_uri
from categories_classification.config import DEFAULT_DRIFT_THRESHOLD, validate_client_id
from categories_classification.errors import CategoriesError, ConfigError, InputDataError, ModelNotFoundError, one_line
from categories_classification.paths import absolute, is_uri, normalize_date, predict_path
from categories_classification.paths import data_prefix as resolve_prefix
from categories_classification.prediction import output
from categories_classification.prediction.failures import NOTHING_WRITTEN, spark_failure
from categories_classification.prediction.scoring import (
    CLIENT, FEATURES, HASH, MALFORMED, OUTPUT_SCHEMA, STATS, ClientModel, Scorer, read_stats)
from categories_classification.prediction.spark import describe, get_spark, is_connect, ship_file
from categories_classification.serialization import untrusted_types
from categories_classification.topk import TOP_K

LOGGER = logging.getLogger(__name__)
SPARK_OUTPUT_SCHEMA = from_arrow_schema(OUTPUT_SCHEMA)  # client_id, product_id, pred_label, pred_score, rank, _stats
STAGING_COLUMN = "date"  # fleet writes: _staging/client_id=<id>/date=<date>-<token>/ (output.Placement.staging)
DUPLICATE_EXAMPLES = 3


@dataclass(frozen=True)
class PredictionResult:  # pylint: disable=too-many-instance-attributes  # what callers and the summary read
    """Where the predictions went and which model made them."""

    client_id: str
    inference_date: str
    output_path: str
    model_name: str
    model_version: int
    run_id: str
    rows_written: int
    rows_skipped: int
    seconds: float
    prediction_run_id: str = ""
    drift: Mapping[str, Any] = field(default_factory=dict)  # the manifest's drift object


class DriftError(InputDataError):
    """The input drifted from the training data beyond the threshold, and ``fail_on_drift`` was asked."""


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
    thresholds = dict(drift_thresholds or {})
    configure_tracking()
    versions = dict(model_versions or {})
    outcomes: dict[str, Outcome] = {}
    jobs: list[_ClientJob] = []
    for client_id in client_ids:
        try:
            threshold = _threshold(client_id, thresholds.get(client_id))
            jobs.append(_prepare(validate_client_id(client_id), date, prefix, versions.get(client_id),
                                 _DriftCheck(threshold, fail_on_drift)))
        except CategoriesError as exc:
            outcomes[client_id] = exc
    if jobs:
        spark = spark or get_spark()
        files = output.files_for(spark, prefix)
        close_abandoned_runs(*(job.client_id for job in jobs))  # runs a killed process left RUNNING
        for job in jobs:
            _start_run(job, describe(spark))
        _score(spark, files, jobs, date)
        for job in jobs:
            outcomes[job.client_id] = _finish(spark, files, job, started)
    return {client_id: outcomes[client_id] for client_id in client_ids}


def _threshold(client_id: str, value: Optional[float]) -> float:
    """A client's drift threshold: ``value`` if given (a positive number), else the project default."""
    if value is None:
        return DEFAULT_DRIFT_THRESHOLD
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"drift_threshold: expected a positive number (a PSI), found {value!r}", client_id)
    return float(value)


@dataclass(frozen=True)
class _DriftCheck:
    """How a client's input is compared with its version's drift reference (None: the version has none)."""

    threshold: float
    fail: bool = False
    reference: Optional[dict[str, Any]] = None
    missing: str = ""  # why there is no reference

    def edges(self, features: Sequence[str]) -> tuple[tuple[float, ...], ...]:
        """Per feature, the reference's inner bin edges (what the workers count rows into)."""
        if self.reference is None:
            return ()
        return tuple(tuple(self.reference["features"][name]["edges"]) for name in features)


@dataclass
class _Progress:
    """What happened to a client's prediction so far."""

    token: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    run_id: str = ""
    spark: str = ""
    staging: str = ""
    stats: list[dict[str, Any]] = field(default_factory=list)
    error: Optional[Exception] = None
    drift_report: Optional[drift.DriftReport] = None


@dataclass
class _ClientJob:  # pylint: disable=too-many-instance-attributes  # one client's whole prediction, as the job needs it
    """One client's prediction as the driver follows it through the job."""

    client_id: str
    date: str
    source: str
    place: output.Placement
    ref: ModelRef
    selector: str
    model_file: Path
    features: list[str]
    header: list[str]
    drift: _DriftCheck
    state: _Progress = field(default_factory=_Progress)

    @property
    def target(self) -> str:
        """The client's output folder for the date."""
        return self.place.target

    @property
    def model(self) -> ClientModel:
        """What the workers need to score this client."""
        return ClientModel(self.model_file.name, tuple(self.features), self.drift.edges(self.features))

    def count(self, key: str) -> int:
        """A counter summed over the partitions that saw this client."""
        return sum(int(entry[key]) for entry in self.state.stats)

    def bin_counts(self) -> dict[str, list[int]]:
        """Per feature, the rows per drift-reference bin summed over the partitions that saw this client."""
        totals: dict[str, list[int]] = {}
        for entry in self.state.stats:
            for name, counts in zip(self.features, entry.get("drift_counts") or []):
                known = totals.setdefault(name, [0] * len(counts))
                totals[name] = [a + int(b) for a, b in zip(known, counts)]
        return totals


def _prepare(client_id: str, date: str, prefix: str, version: Optional[int], check: _DriftCheck) -> _ClientJob:
    """Everything that can be checked before the Spark job: the model, its file, its drift reference, the header."""
    source, place = predict_path(client_id, prefix), output.placement(client_id, date, prefix)
    ref = resolve_model(client_id, version)
    model_file, features, stored = _model_file(ref)
    check = _with_reference(check, ref, features, stored)
    header = _header(client_id, source)
    missing = [column for column in ["product_id", *features] if column not in header]
    if missing:
        raise InputDataError(
            f"file {source}: missing column(s) {', '.join(map(repr, missing))} that the model needs: "
            f"expected product_id, {', '.join(features)}, found {', '.join(header)}", client_id)
    selector = "pinned" if version is not None else CHAMPION
    return _ClientJob(client_id, date, source, place, ref, selector, model_file, features, header, check)


def _with_reference(check: _DriftCheck, ref: ModelRef, features: list[str], stored: Optional[str]) -> _DriftCheck:
    """``check`` with the version's drift reference, or the reason it has none (never an error)."""
    if stored is None:
        return _DriftCheck(check.threshold, check.fail, None,
                           f"version {ref.version} was trained before drift references were stored")
    try:
        reference = json.loads(stored)
    except ValueError:
        reference = None
    problem = (companion_problem(ref, drift.REFERENCE_FILE, stored)
               or drift.reference_problem(reference, features))
    if problem is not None:
        LOGGER.warning("client %s: the drift reference of %s version %s is unusable (%s): drift not checked",
                       ref.client_id, ref.name, ref.version, problem)
        return _DriftCheck(check.threshold, check.fail, None, f"the stored reference is unusable ({problem})")
    return _DriftCheck(check.threshold, check.fail, reference)


def _model_file(ref: ModelRef) -> tuple[Path, list[str], Optional[str]]:
    """The version's skops file on this machine (checked here, once), its input columns and its drift reference."""
    model_bytes, features, reference = fetch_model_and_companion(ref, drift.REFERENCE_FILE)
    # Checked on the driver so that an unsafe file fails once, clearly, instead of in every task.
    refused = untrusted_types(model_bytes)
    if refused:
        raise ModelNotFoundError(
            f"model {ref.name} version {ref.version} needs untrusted type(s) {', '.join(refused)}; refusing to load it",
            ref.client_id)
    if not features:
        raise ModelNotFoundError(f"model {ref.name} version {ref.version} has no input signature", ref.client_id)
    # Named by version and run, so that a shipped name always means the same bytes.
    path = Path(tempfile.gettempdir()) / "categories_models" / f"{ref.name}-v{ref.version}-{ref.run_id[:12]}.skops"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_bytes() != model_bytes:
        staging = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        staging.write_bytes(model_bytes)
        staging.replace(path)
    return path, features, reference


def _header(client_id: str, source: str) -> list[str]:
    """The input's column names, read on the driver (one line, not a Spark job)."""
    local = Path(source[len("file:"):]) if source.startswith("file:") else Path(source)
    if is_uri(source) and not source.startswith("file:"):
        return _spark_header(client_id, source)
    try:
        with gzip.open(local, "rt", encoding="utf-8", newline="") as handle:
            first = handle.readline()
    except FileNotFoundError:
        raise InputDataError(f"file {source}: not found (expected a gzip CSV at this path; is DATA_PREFIX right?)",
                             client_id) from None
    except (gzip.BadGzipFile, zlib.error, EOFError):
        raise InputDataError(f"file {source}: is not a valid gzip file: expected a gzip-compressed CSV", client_id) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputDataError(f"file {source}: cannot be read ({one_line(exc)})", client_id) from None
    if not first.strip():
        raise InputDataError(f"file {source}: is empty: expected a header row and data", client_id)
    return [column.strip() for column in first.split(",")]


def _spark_header(client_id: str, source: str) -> list[str]:
    try:
        first = get_spark().read.text(source).first()
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" in str(exc) or "Path does not exist" in str(exc):
            raise InputDataError(
                f"file {source}: not found (expected a gzip CSV at this path; is DATA_PREFIX right?)", client_id
            ) from None
        raise InputDataError(f"file {source}: cannot be read ({one_line(exc)})", client_id) from None
    except (PySparkException, Py4JJavaError) as exc:
        raise InputDataError(f"file {source}: cannot be read as gzip CSV ({one_line(exc)})", client_id) from None
    if first is None or not first.value.strip():
        raise InputDataError(f"file {source}: is empty: expected a header row and data", client_id)
    return [column.strip() for column in first.value.split(",")]


def _start_run(job: _ClientJob, spark: str) -> None:
    """The client's prediction run (MLflow), opened before the job so the manifest can name it."""
    job.state.run_id = open_run(job.client_id, prediction_run_name(job.date), {**_tags(job), "spark": spark})
    job.state.spark = spark


def _tags(job: _ClientJob) -> dict[str, str]:
    return {"client_id": job.client_id, "inference_date": job.date, "stage": "prediction", "model_name": job.ref.name,
            "model_version": str(job.ref.version), "model_run_id": job.ref.run_id, "model_selector": job.selector,
            "output_path": job.target,
            "drift_reference": "stored" if job.drift.reference is not None else "none",
            "drift_threshold": f"{job.drift.threshold:g}"}


def _score(spark: SparkSession, files: output.Files, jobs: list[_ClientJob], date: str) -> None:
    """Score ``jobs`` in one Spark job; if it fails and several clients share it, score each alone."""
    try:
        _score_together(spark, files, jobs, date)
    except Exception as exc:  # pylint: disable=broad-except  # isolated below, per client
        if len(jobs) == 1:
            jobs[0].state.error = _spark_error(jobs[0], exc)
            return
        LOGGER.warning("the job over %d clients failed (%s): scoring each client alone", len(jobs), one_line(exc))
        for job in jobs:
            job.state.stats, job.state.error = [], None
            try:
                _score_together(spark, files, [job], date)
            except Exception as alone:  # pylint: disable=broad-except  # this client's outcome
                job.state.error = _spark_error(job, alone)


def _score_together(spark: SparkSession, files: output.Files, jobs: list[_ClientJob], date: str) -> None:
    """One Spark job: read every job's file, score each row with its client's model, write staging folders."""
    for job in jobs:
        output.recover_interrupted_swap(files, job.place)
        ship_file(spark, job.model_file)
    scorer = Scorer({job.client_id: job.model for job in jobs}, TOP_K, n_jobs=max(1, _cores(spark) // len(jobs)),
                    hash_ids=True)
    observed = Observation(f"scored_{uuid.uuid4().hex[:8]}")
    scored = (_products(spark, jobs).mapInArrow(scorer, schema=SPARK_OUTPUT_SCHEMA)
              .observe(observed, F.collect_list(STATS).alias("stats"))
              .where(F.col(STATS).isNull()).drop(STATS))
    token = uuid.uuid4().hex[:12]
    try:
        if len(jobs) == 1:
            jobs[0].state.token, jobs[0].state.staging = token, jobs[0].place.staging(token)
            scored.drop(CLIENT).write.mode("overwrite").parquet(jobs[0].state.staging)
        else:
            # Each client's rows land in its own staging folder, outside the dataset.
            for job in jobs:
                job.state.token, job.state.staging = token, job.place.staging(token)
            (scored.withColumn(STAGING_COLUMN, F.lit(f"{date}-{token}"))
             .write.mode("append").partitionBy(CLIENT, STAGING_COLUMN).parquet(jobs[0].place.staging_root))
        stats = read_stats(observed.get["stats"])
    except Exception:
        for job in jobs:
            if job.state.staging:
                files.delete(job.state.staging)
        raise
    for job in jobs:
        job.state.stats = stats.get(job.client_id, [])


def _products(spark: SparkSession, jobs: list[_ClientJob]) -> DataFrame:
    """Every job's input rows as ``client_id, product_id, features, _corrupt, _hash``: one read per file layout."""
    groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[_ClientJob]] = {}
    for job in jobs:
        groups.setdefault((tuple(job.header), tuple(job.features)), []).append(job)
    frames = [_read_group(spark, header, features, members) for (header, features), members in groups.items()]
    return reduce(DataFrame.unionByName, frames)


def _read_group(spark: SparkSession, header: tuple[str, ...], features: tuple[str, ...],
                jobs: list[_ClientJob]) -> DataFrame:
    # An explicit schema (never all strings): features are doubles, anything else is text; a row
    # that does not parse is kept whole in _corrupt and fails its client (not the others).
    schema = T.StructType([T.StructField(column, T.DoubleType() if column in features else T.StringType())
                           for column in header] + [T.StructField(MALFORMED, T.StringType())])
    frame = spark.read.csv([job.source for job in jobs], header=True, schema=schema, mode="PERMISSIVE",
                           columnNameOfCorruptRecord=MALFORMED)
    if len(jobs) == 1:
        client = F.lit(jobs[0].client_id)
    else:  # the layout's own folder name: <prefix>/prediction/client_id=<id>/data_predict.csv.gz
        client = F.regexp_extract(F.col("_metadata.file_path"), r"client_id=([^/]+)/[^/]+$", 1)
    return frame.select(client.alias(CLIENT), "product_id", F.array(*features).alias(FEATURES), MALFORMED,
                        F.xxhash64("product_id").alias(HASH))


def _cores(spark: SparkSession) -> int:
    """Cores of the session's executors (each client's forest shares them with the other tasks)."""
    if is_connect(spark):
        # The service's own setting when it has one; else it runs on this machine (loopback).
        return int(spark.conf.get("spark.default.parallelism", None) or 0) or os.cpu_count() or 1
    return spark.sparkContext.defaultParallelism


def _finish(spark: SparkSession, files: output.Files, job: _ClientJob, started: float) -> Outcome:
    """Check what the job saw of this client; swap its output in, or discard it; close its MLflow run."""
    if job.state.error is None:
        try:
            _check(spark, job)
            _check_drift(job)
            output.swap_in(files, job.place, job.state.token, _manifest(job))
        except CategoriesError as exc:
            job.state.error = exc
    drift_metrics = job.state.drift_report.metrics() if job.state.drift_report is not None else {}
    if job.state.error is not None:
        if job.state.staging:
            files.delete(job.state.staging)
        close_run(job.client_id, job.state.run_id, drift_metrics, failed=True)  # a drift failure keeps its scores
        return job.state.error
    seconds = time.perf_counter() - started
    written, skipped = job.count("written"), job.count("skipped")
    close_run(job.client_id, job.state.run_id, {"rows_out": written, "rows_skipped": skipped, "duration_seconds": seconds,
                                        "model_version": job.ref.version, **drift_metrics})
    if skipped:
        LOGGER.warning("client %s: skipped %d product(s) with a missing feature value in %s", job.client_id, skipped,
                       job.source)
    return PredictionResult(job.client_id, job.date, job.target, job.ref.name, job.ref.version, job.ref.run_id,
                            written, skipped, seconds, job.state.run_id, _drift_record(job))


def _check(spark: SparkSession, job: _ClientJob) -> None:
    """Fail the client if a row did not parse or a product_id appears twice (before anything is swapped in)."""
    malformed = job.count("malformed")
    if malformed:
        example = next(entry["malformed_example"] for entry in job.state.stats if entry["malformed"])
        raise InputDataError(
            f"file {job.source}: a feature value is not a number, or a row has the wrong number of fields "
            f"({malformed} row(s), e.g. {example!r}): expected product_id and numbers in every feature column; "
            f"{NOTHING_WRITTEN}", job.client_id)
    # A client seen by one partition had every row hashed together: no repeated hash means no
    # duplicate, exactly. Otherwise (a repeated hash, or rows spread over partitions) ask Spark.
    if len(job.state.stats) == 1 and job.count("repeated") == 0:
        return
    if len(job.state.stats) > 1 or job.count("repeated"):
        schema = T.StructType([T.StructField(column, T.StringType()) for column in job.header])
        ids = spark.read.csv(job.source, header=True, schema=schema).select("product_id")
        _raise_on_duplicates(job.client_id, job.source, ids)


def _check_drift(job: _ClientJob) -> None:
    """Score the input against the version's reference; warn over the threshold, or fail with ``fail_on_drift``."""
    if job.drift.reference is None:
        LOGGER.info("client %s: no drift check (%s)", job.client_id, job.drift.missing)
        return
    report = job.state.drift_report = drift.drift_report(job.drift.reference, job.bin_counts(), job.drift.threshold)
    if not report.drifted:
        return
    what = (f"file {job.source}: the input drifted from {job.ref.name} version {job.ref.version}'s training data: "
            f"{report.describe_over()} over the threshold {report.threshold:g}")
    if job.drift.fail:
        raise DriftError(f"{what} (fail_on_drift); {NOTHING_WRITTEN}", job.client_id)
    LOGGER.warning("client %s: %s; the predictions are written, check the input", job.client_id, what)


def _drift_record(job: _ClientJob) -> dict[str, Any]:
    """The manifest's ``drift`` object: the scores, or why there are none."""
    if job.drift.reference is None:
        return drift.no_reference(job.drift.missing)
    if job.state.drift_report is None:  # not reached: the check runs before the manifest is written
        return drift.no_reference("not computed")
    return job.state.drift_report.to_dict()


def _raise_on_duplicates(client_id: str, source: str, products: DataFrame) -> None:
    """Exact check on the input (only when the cheap one cannot rule duplicates out)."""
    counts = products.groupBy("product_id").count().where(F.col("count") > 1)
    summary = counts.agg(F.count(F.lit(1)).alias("ids"), F.sum("count").alias("rows")).first()
    if not summary or not summary["ids"]:
        return  # a 64-bit hash collision, not a duplicate
    examples = [row["product_id"] for row in counts.orderBy("product_id").limit(DUPLICATE_EXAMPLES).collect()]
    shown = ", ".join(repr(example if example is not None else "") for example in examples)
    raise InputDataError(
        f"file {source}: {summary['ids']} product_id value(s) appear more than once ({summary['rows']} rows, "
        f"e.g. {shown}): expected one row per product_id; {NOTHING_WRITTEN}", client_id)


def _manifest(job: _ClientJob) -> dict[str, Any]:
    """The lineage record written beside the parquet files."""
    return {
        "client_id": job.client_id,
        "inference_date": job.date,
        "model_name": job.ref.name,
        "model_version": job.ref.version,
        "model_uri": job.ref.uri,
        "model_selector": job.selector,
        "training_run_id": job.ref.run_id,
        "prediction_run_id": job.state.run_id,
        "tracking_uri": display_tracking_uri(),
        "input_path": absolute(job.source),
        "spark": job.state.spark,  # where it ran: a shared Spark Connect service, or a master
        "features": job.features,
        "rows_written": job.count("written"),
        "rows_skipped": job.count("skipped"),
        "drift": _drift_record(job),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _spark_error(job: _ClientJob, exc: Exception) -> Exception:
    """A failed job, told as one line about this client (its input, or the infrastructure's root cause)."""
    if isinstance(exc, CategoriesError) or not isinstance(exc, (PySparkException, Py4JJavaError)):
        return exc
    return spark_failure(job.client_id, job.source, job.target, exc)
