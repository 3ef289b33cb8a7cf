"""Atomic output: write to a hidden staging folder, add the manifest, swap it in by renames.

A failed or killed run never leaves a half-written ``date=`` folder: the previous output of that
date stays until the new one is complete, and the next run cleans up after a killed one (its
staging folder, or a swap cut between the two renames). Paths go through Hadoop's file system,
so ``DATA_PREFIX`` may be a ``file:``, ``s3a:`` or ``hdfs:`` URI.
"""
import json
import uuid
from typing import Any, Callable

from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from categories_classification.errors import InputDataError

MANIFEST = "_manifest.json"  # '_' prefix: Spark and pyarrow skip it when reading the parquet


def write_atomically(spark: SparkSession, predictions: DataFrame, target: str,
                     manifest: Callable[[int], dict[str, Any]], before_swap: Callable[[], None] = lambda: None) -> int:
    """Write ``predictions`` to a staging folder, check, add the manifest, swap it in; return the rows.

    ``manifest`` gets the number of rows written and returns the record stored as
    :data:`MANIFEST`. ``before_swap`` runs once the data is written and may raise: the staging
    folder is then removed and the current output of the date stays as it was.
    """
    jvm = spark.sparkContext._jvm  # pylint: disable=protected-access
    hadoop_conf = spark.sparkContext._jsc.hadoopConfiguration()  # pylint: disable=protected-access
    path = jvm.org.apache.hadoop.fs.Path
    final = path(target)
    filesystem = final.getFileSystem(hadoop_conf)
    parent, name = target.rsplit("/", 1)
    recover_interrupted_swap(jvm, filesystem, final, parent, name)
    token = uuid.uuid4().hex[:12]
    staging = f"{parent}/_staging-{name}-{token}"
    previous = path(f"{parent}/_previous-{name}-{token}")
    # Rows are counted while they are written (an observed metric: exact, no second read).
    observed = Observation("written")
    try:
        predictions.observe(observed, F.count(F.lit(1)).alias("rows")).write.mode("overwrite").parquet(staging)
        rows = int(observed.get["rows"])
        before_swap()
        # The manifest goes into the staging folder, so it appears (or not) together with the data.
        stream = filesystem.create(path(f"{staging}/{MANIFEST}"), True)
        try:
            stream.write(bytearray(json.dumps(manifest(rows), indent=2).encode("utf-8")))
        finally:
            stream.close()
    except Exception:
        filesystem.delete(path(staging), True)
        raise
    if filesystem.exists(final):
        filesystem.rename(final, previous)
    if not filesystem.rename(path(staging), final):
        if filesystem.exists(previous):
            filesystem.rename(previous, final)
        raise InputDataError(f"output {target}: could not move the new output into place")
    filesystem.delete(previous, True)
    return rows


def recover_interrupted_swap(jvm: Any, filesystem: Any, final: Any, parent: str, name: str) -> None:
    """Undo what a run killed mid-write left: its staging folders, and a half-done swap."""
    path = jvm.org.apache.hadoop.fs.Path
    for leftover in filesystem.globStatus(path(f"{parent}/_staging-{name}-*")) or []:
        filesystem.delete(leftover.getPath(), True)
    previous = filesystem.globStatus(path(f"{parent}/_previous-{name}-*")) or []
    if previous and not filesystem.exists(final):
        # Killed between the two renames: the old output is intact under its temporary name.
        filesystem.rename(previous[0].getPath(), final)
    for leftover in filesystem.globStatus(path(f"{parent}/_previous-{name}-*")) or []:
        filesystem.delete(leftover.getPath(), True)
