"""Atomic output: a staging folder outside the dataset, a swap by renames, the manifest in a sibling tree.

``products_categories/`` only ever holds complete parquet files, so DuckDB, Polars, pyarrow,
pandas and Spark can read the whole tree at any time, even during a write. A run writes a client's
date into ``_staging/client_id=<id>/date=<date>-<token>`` (on the same file system, so moving it in
is a rename), strips what is not parquet (checksums, markers), then swaps it in; its lineage goes
to ``_manifests/client_id=<id>/date=<date>.json`` right after. A failed or killed run never leaves
a half-written ``date=`` folder: the previous output of that date stays until the new one is
complete, and the next run cleans up after a killed one (its staging folder, or a swap cut between
its renames). With a classic Spark session, paths go through Hadoop's file system, so
``DATA_PREFIX`` may be a ``file:``, ``s3a:`` or ``hdfs:`` URI; behind Spark Connect this process
has no JVM, and the output must be a path it can reach.
"""
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pyspark.sql import SparkSession

from categories_classification.errors import ConfigError, InfrastructureError
from categories_classification.paths import is_uri, manifest_path, output_path, staging_root
from categories_classification.prediction.spark import is_connect

PREVIOUS_PREFIX = "_previous-"
DATA_SUFFIX = ".parquet"  # the only files that go into the dataset
LEGACY_STAGING_PREFIX = "_staging-"  # where versions before the _staging/ tree staged: inside the dataset


@dataclass(frozen=True)
class Placement:
    """Where one client's output of one date lives, is staged, and is described."""

    target: str  # <prefix>/products_categories/client_id=<id>/date=<date>
    manifest: str  # <prefix>/_manifests/client_id=<id>/date=<date>.json
    work: str  # <prefix>/_staging/client_id=<id>: staging folders, staged manifests, the output being replaced

    @property
    def staging_root(self) -> str:
        """``<prefix>/_staging``: what a job over many clients writes into, partitioned by client and date."""
        return self.work.rsplit("/", 1)[0]

    @property
    def name(self) -> str:
        """The folder's name, ``date=<date>``."""
        return self.target.rsplit("/", 1)[1]

    def staging(self, token: str) -> str:
        """The folder a run writes the parquet files into."""
        return f"{self.work}/{self.name}-{token}"

    def staged_manifest(self, token: str) -> str:
        """The run's manifest until its data is in place."""
        return f"{self.staging(token)}.json"

    def previous(self, token: str) -> str:
        """Where the output being replaced waits until the new one is in place."""
        return f"{self.work}/{PREVIOUS_PREFIX}{self.name}-{token}"


def placement(client_id: str, inference_date: str, prefix: str) -> Placement:
    """The :class:`Placement` of a client's output for a date under ``prefix``."""
    return Placement(output_path(client_id, inference_date, prefix), manifest_path(client_id, inference_date, prefix),
                     f"{staging_root(prefix)}/client_id={client_id}")


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

    def mkdirs(self, path: str) -> None:
        """Create the folder ``path`` and its parents if missing."""


class HadoopFiles:
    """Hadoop's FileSystem through the session's JVM (any URI Spark can write)."""

    def __init__(self, spark: SparkSession) -> None:
        self._jvm = spark.sparkContext._jvm  # pylint: disable=protected-access
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()  # pylint: disable=protected-access

    def _path(self, path: str) -> Any:
        return self._jvm.org.apache.hadoop.fs.Path(path)

    def _fs(self, path: str) -> Any:
        fs = self._path(path).getFileSystem(self._conf)
        # The checksummed local file system hides its .crc files from listings: act on the raw one.
        return fs.getRawFileSystem() if fs.getClass().getName() == "org.apache.hadoop.fs.LocalFileSystem" else fs

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

    def mkdirs(self, path: str) -> None:
        self._fs(path).mkdirs(self._path(path))


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

    def mkdirs(self, path: str) -> None:
        self._local(path).mkdir(parents=True, exist_ok=True)


def files_for(spark: SparkSession, prefix: str) -> Files:
    """The file system to swap outputs under ``prefix`` with, for this kind of session."""
    if not is_connect(spark):
        return HadoopFiles(spark)
    if is_uri(prefix) and not prefix.startswith("file:"):
        raise ConfigError(f"DATA_PREFIX {prefix!r}: with Spark Connect (SPARK_REMOTE) the output must be a local path "
                          "or file: URI shared with the service; unset SPARK_REMOTE to write to other file systems")
    return LocalFiles()


def recover_interrupted_swap(files: Files, place: Placement) -> None:
    """Finish or undo what a run killed mid-write left for ``place``: staging folders, a half-done swap."""
    for staged in files.glob(f"{place.work}/{place.name}-*.json"):
        if files.exists(staged[:-len(".json")]) or not files.exists(place.target):
            files.delete(staged)  # killed before its data was swapped in
        else:
            _publish(files, staged, place.manifest)  # killed after: the data is in, its lineage goes with it
    for leftover in files.glob(f"{place.work}/{place.name}-*"):
        files.delete(leftover)
    parent = place.target.rsplit("/", 1)[0]
    # A run of an earlier version, killed, left these inside the dataset.
    for leftover in files.glob(f"{parent}/{LEGACY_STAGING_PREFIX}{place.name}-*"):
        files.delete(leftover)
    for folder in (place.work, parent):
        previous = files.glob(f"{folder}/{PREVIOUS_PREFIX}{place.name}-*")
        if previous and not files.exists(place.target):
            # Killed between the two renames: the old output is intact under its temporary name.
            files.rename(previous[0], place.target)
        for leftover in files.glob(f"{folder}/{PREVIOUS_PREFIX}{place.name}-*"):
            files.delete(leftover)


def swap_in(files: Files, place: Placement, token: str, manifest: dict[str, Any]) -> None:
    """Swap the run's staging folder in as ``place.target``, then put its manifest in place."""
    staging, staged = place.staging(token), place.staged_manifest(token)
    for path in files.glob(f"{staging}/*"):
        if not path.endswith(DATA_SUFFIX):  # .crc checksums, _SUCCESS: only data goes into the dataset
            files.delete(path)
    # Staged first: if this process dies after the data rename, the next run publishes it.
    files.write_text(staged, json.dumps(manifest, indent=2))
    previous = place.previous(token)
    files.mkdirs(place.target.rsplit("/", 1)[0])  # a rename into a missing folder would fall back to a copy
    if files.exists(place.target):
        files.rename(place.target, previous)
    if not files.rename(staging, place.target):
        files.delete(staged)
        if files.exists(previous):
            files.rename(previous, place.target)
        raise InfrastructureError(f"output {place.target}: could not move the new output into place from {staging}; "
                                  "the previous output of this date is left as it was")
    _publish(files, staged, place.manifest)
    files.delete(previous)


def _publish(files: Files, staged: str, target: str) -> None:
    """Move a manifest to ``target``, replacing the one there (in one rename where the file system can)."""
    files.mkdirs(target.rsplit("/", 1)[0])
    if not files.rename(staged, target):
        # Object stores and HDFS refuse to rename over an existing file.
        files.delete(target)
        if not files.rename(staged, target):
            raise InfrastructureError(f"manifest {target}: could not move it into place from {staged}")
