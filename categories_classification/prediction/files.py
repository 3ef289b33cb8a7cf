"""The file system an output is written through: this machine's (a local prefix, and always behind Spark
Connect, which gives this process no JVM) or Hadoop's (a classic Spark session and a URI: ``file:``,
``s3a:``, ``hdfs:``)."""
import os
import shutil
from pathlib import Path
from typing import Any, Optional, Protocol

from pyspark.sql import SparkSession

from categories_classification.errors import ConfigError
from categories_classification.paths import is_local, is_uri, local_path
from categories_classification.prediction.spark import is_connect

__all__ = ["Files", "HadoopFiles", "LocalFiles", "files_for"]


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
        """Create ``path`` holding ``text``; its folder must exist (a missing one is never recreated)."""

    def read_text(self, path: str) -> Optional[str]:
        """The text of the file ``path``, None if there is none."""

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
        parent = path.rsplit("/", 1)[0]
        if not self.exists(parent):  # create() would make it: a removed staging area must stay removed
            raise FileNotFoundError(f"{parent}: no such folder")
        stream = self._fs(path).create(self._path(path), True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()

    def read_text(self, path: str) -> Optional[str]:
        if not self.exists(path):
            return None
        stream = self._fs(path).open(self._path(path))
        try:
            return str(self._jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8"))
        finally:
            stream.close()

    def mkdirs(self, path: str) -> None:
        self._fs(path).mkdirs(self._path(path))


class LocalFiles:
    """This machine's file system (Spark Connect: no JVM here; the service shares the disk)."""

    @staticmethod
    def local(path: str) -> Path:
        """``path`` (a plain path or a ``file:`` URI) as a local path."""
        return local_path(path)

    def exists(self, path: str) -> bool:
        return self.local(path).exists()

    def rename(self, source: str, target: str) -> bool:
        try:
            os.rename(self.local(source), self.local(target))
        except OSError:
            return False
        return True

    def delete(self, path: str) -> None:
        local = self.local(path)
        if local.is_dir():
            shutil.rmtree(local)
        elif local.exists():
            local.unlink()

    def glob(self, pattern: str) -> list[str]:
        local = self.local(pattern)
        return sorted(str(path) for path in local.parent.glob(local.name))

    def write_text(self, path: str, text: str) -> None:
        self.local(path).write_text(text, encoding="utf-8")  # never creates its folder

    def read_text(self, path: str) -> Optional[str]:
        try:
            return self.local(path).read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def mkdirs(self, path: str) -> None:
        self.local(path).mkdir(parents=True, exist_ok=True)


def files_for(spark: SparkSession, prefix: str) -> Files:
    """The file system to swap outputs under ``prefix`` with, for this kind of session and prefix.

    A plain local path is this machine's even with a classic session: the same disk, without a
    round trip to the JVM per call (a dozen per client, most of a small client's swap time).
    """
    if not is_uri(prefix):
        return LocalFiles()
    if not is_connect(spark):
        return HadoopFiles(spark)
    if not is_local(prefix):
        raise ConfigError(f"DATA_PREFIX {prefix!r}: with Spark Connect (SPARK_REMOTE) the output must be a local path "
                          "or file: URI shared with the service; unset SPARK_REMOTE to write to other file systems")
    return LocalFiles()
