"""Atomic output: a hidden staging folder per client and date, the manifest inside it, a swap by renames.

A failed or killed run never leaves a half-written ``date=`` folder: the previous output of that
date stays until the new one is complete, and the next run cleans up after a killed one (its
staging folder, or a swap cut between the two renames). With a classic Spark session, paths go
through Hadoop's file system, so ``DATA_PREFIX`` may be a ``file:``, ``s3a:`` or ``hdfs:`` URI;
behind Spark Connect this process has no JVM, and the output must be a path it can reach.
"""
import json
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

from pyspark.sql import SparkSession

from categories_classification.errors import ConfigError, InfrastructureError
from categories_classification.paths import is_uri
from categories_classification.prediction.spark import is_connect

MANIFEST = "_manifest.json"  # '_' prefix: Spark and pyarrow skip it when reading the parquet
STAGING_PREFIX = "_staging-"
PREVIOUS_PREFIX = "_previous-"


class Files(Protocol):
    """The few file-system operations the swap needs."""

    def exists(self, path: str) -> bool:
        """True if ``path`` exists."""

    def rename(self, source: str, target: str) -> bool:
        """Move ``source`` to ``target``; False if it could not."""

    def delete(self, path: str) -> None:
        """Remove ``path`` (recursively) if it exists."""

    def glob(self, pattern: str) -> list[str]:
        """Paths matching ``pattern`` (``*`` in the last part only)."""

    def write_text(self, path: str, text: str) -> None:
        """Create ``path`` (and its folder) holding ``text``."""


class HadoopFiles:
    """Hadoop's FileSystem through the session's JVM (any URI Spark can write)."""

    def __init__(self, spark: SparkSession) -> None:
        self._jvm = spark.sparkContext._jvm  # pylint: disable=protected-access
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()  # pylint: disable=protected-access

    def _path(self, path: str) -> Any:
        return self._jvm.org.apache.hadoop.fs.Path(path)

    def _fs(self, path: str) -> Any:
        return self._path(path).getFileSystem(self._conf)

    def exists(self, path: str) -> bool:
        return bool(self._fs(path).exists(self._path(path)))

    def rename(self, source: str, target: str) -> bool:
        return bool(self._fs(source).rename(self._path(source), self._path(target)))

    def delete(self, path: str) -> None:
        self._fs(path).delete(self._path(path), True)

    def glob(self, pattern: str) -> list[str]:
        return [status.getPath().toString() for status in self._fs(pattern).globStatus(self._path(pattern)) or []]

    def write_text(self, path: str, text: str) -> None:
        stream = self._fs(path).create(self._path(path), True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()


class LocalFiles:
    """This machine's file system (Spark Connect: no JVM here; the service shares the disk)."""

    @staticmethod
    def _local(path: str) -> Path:
        return Path(path[len("file:"):] if path.startswith("file:") else path)

    def exists(self, path: str) -> bool:
        return self._local(path).exists()

    def rename(self, source: str, target: str) -> bool:
        try:
            os.rename(self._local(source), self._local(target))
        except OSError:
            return False
        return True

    def delete(self, path: str) -> None:
        local = self._local(path)
        if local.is_dir():
            shutil.rmtree(local)
        elif local.exists():
            local.unlink()

    def glob(self, pattern: str) -> list[str]:
        local = self._local(pattern)
        return sorted(str(path) for path in local.parent.glob(local.name))

    def write_text(self, path: str, text: str) -> None:
        local = self._local(path)
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(text, encoding="utf-8")


def files_for(spark: SparkSession, prefix: str) -> Files:
    """The file system to swap outputs under ``prefix`` with, for this kind of session."""
    if not is_connect(spark):
        return HadoopFiles(spark)
    if is_uri(prefix) and not prefix.startswith("file:"):
        raise ConfigError(f"DATA_PREFIX {prefix!r}: with Spark Connect (SPARK_REMOTE) the output must be a local path "
                          "or file: URI shared with the service; unset SPARK_REMOTE to write to other file systems")
    return LocalFiles()


def staging_path(target: str, token: str) -> str:
    """The hidden folder a run writes ``target`` into before the swap (beside it)."""
    parent, name = target.rsplit("/", 1)
    return f"{parent}/{STAGING_PREFIX}{name}-{token}"


def recover_interrupted_swap(files: Files, target: str) -> None:
    """Undo what a run killed mid-write left beside ``target``: staging folders, and a half-done swap."""
    parent, name = target.rsplit("/", 1)
    for leftover in files.glob(f"{parent}/{STAGING_PREFIX}{name}-*"):
        files.delete(leftover)
    previous = files.glob(f"{parent}/{PREVIOUS_PREFIX}{name}-*")
    if previous and not files.exists(target):
        # Killed between the two renames: the old output is intact under its temporary name.
        files.rename(previous[0], target)
    for leftover in files.glob(f"{parent}/{PREVIOUS_PREFIX}{name}-*"):
        files.delete(leftover)


def swap_in(files: Files, staging: str, target: str, manifest: dict[str, Any], token: str) -> None:
    """Add the manifest to ``staging`` (so data and manifest appear together), then swap it in."""
    files.write_text(f"{staging}/{MANIFEST}", json.dumps(manifest, indent=2))
    parent, name = target.rsplit("/", 1)
    previous = f"{parent}/{PREVIOUS_PREFIX}{name}-{token}"
    if files.exists(target):
        files.rename(target, previous)
    if not files.rename(staging, target):
        if files.exists(previous):
            files.rename(previous, target)
        raise InfrastructureError(f"output {target}: could not move the new output into place from {staging}; "
                                  "the previous output of this date is left as it was")
    files.delete(previous)
