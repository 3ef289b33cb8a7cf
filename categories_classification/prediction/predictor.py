"""Prediction stage: resolve the model -> Spark read -> ``mapInArrow`` top-k -> atomic parquet write.

How the single gzip partition is scored, the duplicate ``product_id`` rule and the atomic swap
are explained in the README ("How prediction works").
"""
import functools
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import mlflow

from py4j.protocol import Py4JJavaError
from pyspark.errors import AnalysisException, PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import from_arrow_schema

from categories_classification import registry
from categories_classification.config import validate_client_id
from categories_classification.errors import InputDataError, ModelNotFoundError, one_line
from categories_classification.paths import absolute, normalize_date, output_path, predict_path
from categories_classification.prediction.output import write_atomically
from categories_classification.prediction.scoring import Scorer
from categories_classification.serialization import untrusted_types
from categories_classification.prediction.spark import get_spark
from categories_classification.topk import ARROW_SCHEMA, TOP_K

LOGGER = logging.getLogger(__name__)
OUTPUT_SCHEMA = from_arrow_schema(ARROW_SCHEMA)  # product_id, pred_label, pred_score, rank
HASH_COLUMN = "_product_id_hash"  # 64-bit hash of product_id, fed to the scorer for the duplicate check
DUPLICATE_EXAMPLES = 3


@dataclass(frozen=True)
class PredictionResult:
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


def predict_categories(client_id: str, inference_date: str, *, model_version: Optional[int] = None,
                       data_prefix: Optional[str] = None, spark: Optional[SparkSession] = None) -> PredictionResult:
    """Score the client's prediction file with its champion (or ``model_version``); write top-5 parquet.

    The output folder gets a ``_manifest.json`` (model name, version, training run, prediction
    run, time) written with the parquet files and swapped in with them; the prediction itself
    is an MLflow run ``prediction_<date>`` in the client's experiment.
    """
    started = time.perf_counter()
    client_id = validate_client_id(client_id)
    date = normalize_date(inference_date, "inference_date", client_id)
    source = predict_path(client_id, data_prefix)
    target = output_path(client_id, date, data_prefix)

    registry.configure_tracking()
    registry.close_abandoned_runs(client_id)  # runs a killed process left RUNNING
    ref = registry.resolve_model(client_id, model_version)
    model_bytes, features = _fetch_model(ref)
    experiment_id = registry.ensure_experiment(client_id)
    spark = spark or get_spark()
    tags = {"client_id": client_id, "inference_date": date, "stage": "prediction", "model_name": ref.name,
            "model_version": str(ref.version), "model_run_id": ref.run_id,
            "model_selector": "pinned" if model_version is not None else registry.CHAMPION, "output_path": target}
    with registry.tracking_errors(client_id), mlflow.start_run(
        experiment_id=experiment_id, run_name=f"prediction_{date}", tags=tags
    ) as run:
        manifest = functools.partial(_manifest, ref=ref, tags=tags, prediction_run_id=run.info.run_id,
                                     source=source, features=features)
        rows, skipped = _score_and_write(spark, ref, model_bytes, features, source=source, target=target,
                                         manifest=manifest)
        seconds = time.perf_counter() - started
        mlflow.log_metrics({"rows_out": rows, "rows_skipped": skipped, "duration_seconds": seconds,
                            "model_version": ref.version})
    if skipped:
        LOGGER.warning("client %s: skipped %d product(s) with a missing feature value in %s", client_id, skipped, source)
    return PredictionResult(client_id, date, target, ref.name, ref.version, ref.run_id, rows, skipped, seconds,
                            run.info.run_id)


def _score_and_write(spark: SparkSession, ref: registry.ModelRef, model_bytes: bytes, features: list[str], *,  # pylint: disable=too-many-arguments
                     source: str, target: str, manifest: Callable[..., dict[str, Any]]) -> tuple[int, int]:
    """Read, score with mapInArrow, check duplicates, write atomically; return (rows written, products skipped)."""
    products = _read_products(spark, ref.client_id, source, features)
    partitions = products.rdd.getNumPartitions()
    # The hash check is exact only when one task sees every row (the gzip case); with several
    # partitions the exact Spark check runs instead, so the rows are not hashed for nothing.
    hashed = partitions == 1
    shipped = spark.sparkContext.broadcast(model_bytes)
    skipped = spark.sparkContext.accumulator(0)
    repeated = spark.sparkContext.accumulator(0)
    scorer = Scorer(
        model_key=f"{ref.name}/{ref.version}", model_bytes=lambda: shipped.value, features=tuple(features), k=TOP_K,
        n_jobs=_threads_per_task(spark, partitions), skipped=skipped,
        hash_column=HASH_COLUMN if hashed else None, repeated=repeated,
    )

    def duplicates_check() -> None:
        # No repeated hash among every row means no duplicate id, exactly; otherwise (a repeated
        # hash, or ids spread over partitions) ask Spark exactly.
        if hashed and repeated.value == 0:
            return
        _raise_on_duplicates(ref.client_id, source, products)

    try:
        scored = (products.withColumn(HASH_COLUMN, F.xxhash64("product_id")) if hashed else products).mapInArrow(
            scorer, schema=OUTPUT_SCHEMA)
        rows = write_atomically(spark, scored, target,
                                lambda written: manifest(rows_written=written, rows_skipped=skipped.value),
                                before_swap=duplicates_check)
    except (PySparkException, Py4JJavaError) as exc:
        raise _input_error(ref.client_id, source, exc) from None
    finally:
        shipped.destroy()
    return rows, int(skipped.value)


def _threads_per_task(spark: SparkSession, partitions: int) -> int:
    """Threads for each task's forest: the cores the tasks leave idle, within one executor."""
    cores = spark.sparkContext.defaultParallelism
    per_executor = int(spark.sparkContext.getConf().get("spark.executor.cores", str(cores)))
    return max(1, min(cores // max(partitions, 1), per_executor))


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
        f"e.g. {shown}): expected one row per product_id; nothing written, the output of this date is left as it was",
        client_id,
    )


def _manifest(*, ref: registry.ModelRef, tags: dict[str, str], prediction_run_id: str, source: str,
              features: list[str], rows_written: int, rows_skipped: int) -> dict[str, Any]:
    """The lineage record written beside the parquet files."""
    return {
        "client_id": ref.client_id,
        "inference_date": tags["inference_date"],
        "model_name": ref.name,
        "model_version": ref.version,
        "model_uri": ref.uri,
        "model_selector": tags["model_selector"],
        "training_run_id": ref.run_id,
        "prediction_run_id": prediction_run_id,
        "tracking_uri": registry.display_tracking_uri(),
        "input_path": absolute(source),
        "features": features,
        "rows_written": rows_written,
        "rows_skipped": rows_skipped,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _fetch_model(ref: registry.ModelRef) -> tuple[bytes, list[str]]:
    """The model's skops bytes, checked on the driver, and its input columns."""
    model_bytes, features = registry.fetch_model_bytes(ref)
    # Checked here so that an unsafe file fails once, clearly, instead of in every Spark task.
    refused = untrusted_types(model_bytes)
    if refused:
        raise ModelNotFoundError(
            f"model {ref.name} version {ref.version} needs untrusted type(s) {', '.join(refused)}; refusing to load it",
            ref.client_id,
        )
    if not features:
        raise ModelNotFoundError(f"model {ref.name} version {ref.version} has no input signature", ref.client_id)
    return model_bytes, features


def _read_products(spark: SparkSession, client_id: str, source: str, features: list[str]) -> DataFrame:
    header = _header(spark, client_id, source)
    missing = [column for column in ["product_id", *features] if column not in header]
    if missing:
        raise InputDataError(
            f"file {source}: missing column(s) {', '.join(map(repr, missing))} that the model needs: "
            f"expected product_id, {', '.join(features)}, found {', '.join(header)}",
            client_id,
        )
    # An explicit schema (never all strings): features are doubles, anything else is text.
    schema = T.StructType([
        T.StructField(column, T.DoubleType() if column in features else T.StringType()) for column in header
    ])
    # One gzip file is one unsplittable partition: kept as it is (see the module docstring).
    return spark.read.csv(source, header=True, schema=schema, mode="FAILFAST").select("product_id", *features)


def _header(spark: SparkSession, client_id: str, source: str) -> list[str]:
    try:
        first = spark.read.text(source).first()
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" in str(exc) or "Path does not exist" in str(exc):
            raise InputDataError(
                f"file {source}: not found (expected a gzip CSV at this path; is DATA_PREFIX right?)", client_id
            ) from None
        raise InputDataError(f"file {source}: cannot be read ({one_line(exc)})", client_id) from None
    except PySparkException as exc:
        raise InputDataError(f"file {source}: cannot be read ({one_line(exc)})", client_id) from None
    except Exception as exc:  # pylint: disable=broad-except  # Py4J wraps Java I/O errors (bad gzip)
        raise InputDataError(f"file {source}: cannot be read as gzip CSV ({one_line(exc)})", client_id) from None
    if first is None or not first.value.strip():
        raise InputDataError(f"file {source}: is empty: expected a header row and data", client_id)
    return [column.strip() for column in first.value.split(",")]


def _input_error(client_id: str, source: str, exc: Exception) -> Exception:
    # Spark reports parse and decompression failures as long Java traces: map the known causes
    # to one line, and let anything else through unchanged (it is not an input problem).
    text = str(exc)
    if any(marker in text for marker in ("MALFORMED_RECORD", "Malformed records", "NumberFormatException")):
        return InputDataError(
            f"file {source}: a feature value is not a number (Spark could not parse a row as "
            "product_id + numeric features): expected numbers in every feature column",
            client_id,
        )
    if any(marker in text for marker in ("ZipException", "EOFException", "Not in GZIP format", "incorrect header check")):
        return InputDataError(f"file {source}: is not a valid gzip file: expected a gzip-compressed CSV", client_id)
    if "FAILED_READ_FILE" in text:
        return InputDataError(f"file {source}: cannot be read ({one_line(exc)})", client_id)
    return exc
