"""The Spark job: every planned client's rows scored together, each with its own model, into staging folders.

One job reads every client's input (one read per file layout), scores each row with its client's
model on the workers (:mod:`.scoring`, whose imports stay light: no MLflow, no driver code) and
writes each client's rows into its own staging folder outside the dataset. What the workers
counted comes back per client (an observed metric, so it works the same with a classic session,
a cluster or Spark Connect). If the job over several clients fails, each is scored alone, so
that one client's bad file fails that client only. Nothing is swapped in here (see ``output``).
"""
import logging
import os
import uuid
from dataclasses import dataclass, replace
from functools import reduce
from typing import Any, Mapping, Optional, Sequence, Union

from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import from_arrow_schema

from categories_classification.errors import CategoriesError, one_line, service_lost
from categories_classification.paths import is_local
from categories_classification.prediction import checks, output
from categories_classification.prediction.files import Files
from categories_classification.prediction.failures import spark_failure
from categories_classification.prediction.plan import ClientPlan
from categories_classification.prediction.scoring import CLIENT, FEATURES, HASH, MALFORMED, OUTPUT_SCHEMA, STATS, Scorer, read_stats
from categories_classification.prediction.spark import (connection_lost, describe, give_up, is_connect, shares_this_disk,
                                                         ship_file)
from categories_classification.topk import TOP_K

LOGGER = logging.getLogger(__name__)
SPARK_OUTPUT_SCHEMA = from_arrow_schema(OUTPUT_SCHEMA)  # client_id, product_id, pred_label, pred_score, rank, _stats
STAGING_COLUMN = "date"  # fleet writes: _staging/client_id=<id>/date=<date>-<token>/ (output.Placement.staging)
# Over this many paths Spark lists input files in a job of its own (~2 s for 100 local files).
LISTING_THRESHOLD = "spark.sql.sources.parallelPartitionDiscovery.threshold"
# Spark packs small files into partitions of up to 128 MB (each file counted 4 MB): 100 clients made
# 31+31+31+7 files on 2 cores, a second wave of one task on one core. Twice the cores gives even waves.
MIN_PARTITIONS = "spark.sql.files.minPartitionNum"


@dataclass(frozen=True)
class Scored:
    """What the job did for one client: its staging folder and the workers' statistics, or its error."""

    token: str = ""  # names the staging folder (output.Placement.staging)
    staging: str = ""
    stats: tuple[Mapping[str, Any], ...] = ()  # one record per partition that saw the client
    error: Optional[Exception] = None


def score(spark: SparkSession, files: Files, plans: Sequence[ClientPlan], date: str) -> list[Scored]:
    """Score ``plans`` in one Spark job (one :class:`Scored` per plan, in order); if it fails, each alone."""
    together = _attempt(spark, files, plans, date)
    if not isinstance(together, Exception):
        return together
    if _lost(spark, together) or len(plans) == 1:
        return [Scored(error=_spark_error(spark, plan, together)) for plan in plans]
    LOGGER.warning("the job over %d clients failed (%s): scoring each client alone", len(plans), one_line(together))
    scored: list[Scored] = []
    lost: Optional[Exception] = None
    for plan in plans:
        alone = lost or _attempt(spark, files, [plan], date)
        if isinstance(alone, Exception) and _lost(spark, alone):
            lost = alone  # the service is gone: the clients after this one are not tried
        scored.append(Scored(error=_spark_error(spark, plan, alone)) if isinstance(alone, Exception) else alone[0])
    return scored


def _lost(spark: SparkSession, error: Exception) -> bool:
    """True if ``error`` says the Spark Connect service went away; then nothing waits on it any more."""
    if connection_lost(error) is None:
        return False
    give_up(spark)
    return True


def _attempt(spark: SparkSession, files: Files, plans: Sequence[ClientPlan],
             date: str) -> Union[list[Scored], Exception]:
    """:func:`_score_together`, or what made it fail."""
    try:
        return _score_together(spark, files, plans, date)
    except Exception as exc:  # pylint: disable=broad-except  # isolated by the caller, per client
        return exc


def _score_together(spark: SparkSession, files: Files, plans: Sequence[ClientPlan], date: str) -> list[Scored]:
    """One Spark job: read every plan's file, score each row with its client's model, write staging folders."""
    # Executors on this machine read the driver's cached model files where they are (no copy per file).
    local = shares_this_disk(spark)
    for plan in plans:
        output.recover_interrupted_swap(files, plan.place)
        if not local:
            ship_file(spark, plan.model_file)
    models = {plan.client_id: replace(plan.model, file_name=str(plan.model_file)) if local else plan.model
              for plan in plans}
    scorer = Scorer(models, TOP_K, n_jobs=max(1, _cores(spark) // len(plans)), hash_ids=True)
    observed = Observation(f"scored_{uuid.uuid4().hex[:8]}")
    scored = (_products(spark, plans).mapInArrow(scorer, schema=SPARK_OUTPUT_SCHEMA)
              .observe(observed, F.collect_list(STATS).alias("stats"))
              .where(F.col(STATS).isNull()).drop(STATS))
    token = output.claim_staging(files, [plan.place for plan in plans])  # owner records beside the staging folders
    stagings = [plan.place.staging(token) for plan in plans]
    try:
        if len(plans) == 1:
            scored.drop(CLIENT).write.mode("overwrite").parquet(stagings[0])
        else:
            # Each client's rows land in its own staging folder, outside the dataset.
            (scored.withColumn(STAGING_COLUMN, F.lit(f"{date}-{token}"))
             .write.mode("append").partitionBy(CLIENT, STAGING_COLUMN).parquet(plans[0].place.staging_root))
        stats = read_stats(observed.get["stats"])
    except Exception:
        for staging in stagings:
            files.delete(staging)
        raise
    return [Scored(token, staging, tuple(stats.get(plan.client_id, []))) for plan, staging in zip(plans, stagings)]


def _products(spark: SparkSession, plans: Sequence[ClientPlan]) -> DataFrame:
    """Every plan's input rows as ``client_id, product_id, features, _corrupt, _hash``: one read per file layout."""
    if len(plans) > 1:
        spark.conf.set(MIN_PARTITIONS, str(2 * _cores(spark)))
        if all(is_local(plan.source) for plan in plans):
            # Files on this machine's disk: the driver lists them in milliseconds (an object store keeps the job).
            spark.conf.set(LISTING_THRESHOLD, str(max(len(plans) + 1, 32)))
    groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[ClientPlan]] = {}
    for plan in plans:
        groups.setdefault((plan.header, plan.features), []).append(plan)
    frames = [_read_group(spark, header, features, members) for (header, features), members in groups.items()]
    return reduce(DataFrame.unionByName, frames)


def _read_group(spark: SparkSession, header: tuple[str, ...], features: tuple[str, ...],
                plans: list[ClientPlan]) -> DataFrame:
    # An explicit schema (never all strings): features are doubles, anything else is text; a row
    # that does not parse is kept whole in _corrupt and fails its client (not the others).
    schema = T.StructType([T.StructField(column, T.DoubleType() if column in features else T.StringType())
                           for column in header] + [T.StructField(MALFORMED, T.StringType())])
    frame = spark.read.csv([plan.source for plan in plans], header=True, schema=schema, mode="PERMISSIVE",
                           columnNameOfCorruptRecord=MALFORMED)
    if len(plans) == 1:
        client = F.lit(plans[0].client_id)
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


def _spark_error(spark: SparkSession, plan: ClientPlan, exc: Exception) -> Exception:
    """A failed job, told as one line about this client (its input, a lost service, or the root cause)."""
    if isinstance(exc, CategoriesError) or not isinstance(exc, (PySparkException, Py4JJavaError)):
        return exc
    reason = connection_lost(exc)
    if reason is not None:
        return service_lost(plan.client_id, f"Spark Connect at {describe(spark)}", "during scoring", reason, plan.date)
    return spark_failure(plan.client_id, plan.source, plan.target, exc)


def input_ids(spark: SparkSession, plan: ClientPlan) -> DataFrame:
    """The ``product_id`` column of the plan's input, read as text (for the exact duplicate check)."""
    schema = T.StructType([T.StructField(column, T.StringType()) for column in plan.header])
    return spark.read.csv(plan.source, header=True, schema=schema).select("product_id")


def raise_on_duplicates(client_id: str, source: str, products: DataFrame) -> None:
    """Exact check on the input (only when the workers' cheap one cannot rule duplicates out)."""
    counts = products.groupBy("product_id").count().where(F.col("count") > 1)
    summary = counts.agg(F.count(F.lit(1)).alias("ids"), F.sum("count").alias("rows")).first()
    if not summary or not summary["ids"]:
        return  # a 64-bit hash collision, not a duplicate
    examples = [row["product_id"] for row in counts.orderBy("product_id").limit(checks.DUPLICATE_EXAMPLES).collect()]
    problem = checks.duplicates_problem(client_id, source, summary["ids"], summary["rows"], examples)
    if problem is not None:
        raise problem
