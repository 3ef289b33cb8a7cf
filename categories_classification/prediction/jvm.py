"""The Spark JVM this process starts (local mode, a loopback cluster's driver): its output and a class-data archive.

Its stderr goes to a log file (quiet mode), handed to the JVM when it is launched, so that this
process's own stderr is never redirected (a session may be started in a thread while the command
goes on). Starting the JVM loads and verifies some 10,000 of Spark's classes on every command; a
class-data sharing archive (the JDK's CDS: those classes mapped from one file, as they are once
loaded) made once per machine, Java and Spark takes about 2 s off the session's start and 1.4 s off
its first job (measured on 2 cores). It is built in the background, once, by the first command
that finds none (:func:`build`), and checked by a second JVM before it is used: a truncated archive
would crash the JVM, one that does not match is refused by the JVM (said in its log) and the JVM
starts as it would without. ``CATEGORIES_JVM_ARCHIVE`` names the folder for archives, or ``off``.
"""
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Mapping, Optional

from categories_classification.scratch import mark_used, prune

LOGGER = logging.getLogger(__name__)
ARCHIVE_VARIABLE = "CATEGORIES_JVM_ARCHIVE"
JAVA_OPTIONS = "spark.driver.extraJavaOptions"
# A build takes ~30 s of CPU (a small job, the dump at exit, the check); a lock older than this was a
# build that failed (it keeps its lock, so that a machine where it cannot work does not retry every command).
BUILD_LOCK_SECONDS = 24 * 3600.0
BUILD_TIMEOUT_SECONDS = 300.0
_OPTION = "_CATEGORIES_JVM_ARCHIVE_OPTION"  # set in the builder's own JVMs only: the archive option they use


def scratch_folder() -> Path:
    """``<tmp>/categories_spark``: the JVMs' logs, the package shipped to workers, the class-data archives
    (each removed once unused for a week)."""
    return Path(tempfile.gettempdir()) / "categories_spark"


def log_path(app_name: str) -> Path:
    """Where the JVM's own output goes: ``$SPARK_JVM_LOG``, default ``<tmp>/categories_spark/<app>-<pid>.log``."""
    return Path(os.environ.get("SPARK_JVM_LOG") or scratch_folder() / f"{app_name}-{os.getpid()}.log")


def launch(settings: Mapping[str, str], app_name: str, *, quiet: bool) -> None:
    """Start the py4j gateway's JVM with ``settings`` unless one runs (a later session reuses it).

    With ``quiet``, the JVM's stderr (and its Python workers') goes to :func:`log_path`.
    """
    # pylint: disable=import-outside-toplevel,protected-access  # pyspark's own way to hand it a gateway
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway

    if SparkContext._gateway is not None or os.environ.get("PYSPARK_GATEWAY_PORT"):
        return
    prune(scratch_folder())  # logs, package zips and archives of earlier commands, unused for a week
    settings = dict(settings)
    option = class_data_option()
    if option:
        settings[JAVA_OPTIONS] = f"{settings.get(JAVA_OPTIONS, '')} {option}".strip()
    conf = SparkConf(loadDefaults=False).setAll(list(settings.items()))
    with _stderr(app_name if quiet else None) as stderr:
        gateway = launch_gateway(conf, popen_kwargs={"stderr": stderr} if stderr is not None else None)
    SparkContext._ensure_initialized(gateway=gateway)


@contextmanager
def _stderr(app_name: Optional[str]) -> Iterator[Optional[IO[bytes]]]:
    if app_name is None:
        yield None
        return
    log = log_path(app_name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:  # the JVM holds its own descriptor once started
        yield handle


def archive_path() -> Optional[Path]:
    """This machine's archive for the Java and Spark in use (None: archives are off, or no Java found)."""
    folder = os.environ.get(ARCHIVE_VARIABLE, "")
    if folder.lower() == "off":
        return None
    java = _java()
    if java is None:
        return None
    return (Path(folder) if folder else scratch_folder()) / f"spark-{archive_key(java)}.jsa"


def archive_key(java: Path) -> str:
    """Names the archive by what it must match: the JVM (its library's path, size and time) and Spark's jars
    (their folder, and when it was written: a virtual environment made again at the same path has new jars,
    which the JVM refuses an archive of the old ones for)."""
    # pylint: disable=import-outside-toplevel
    import pyspark

    spark = Path(pyspark.__file__).resolve().parent
    jars = spark / "jars"
    parts = [str(java.resolve()), pyspark.__version__, str(spark), str(jars.stat().st_mtime_ns if jars.is_dir() else 0)]
    for library in sorted(java.resolve().parent.parent.glob("lib/server/libjvm.so")):
        stat = library.stat()
        parts += [str(stat.st_size), str(int(stat.st_mtime))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _java() -> Optional[Path]:
    """The java Spark's launcher runs: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    return Path(found) if found and Path(found).is_file() else None


def class_data_option() -> str:
    """The JVM option that uses this machine's archive ("" while there is none: one is then built)."""
    forced = os.environ.get(_OPTION)
    if forced is not None:
        return forced
    archive = archive_path()
    if archive is None:
        return ""
    if archive.is_file():
        mark_used(archive)
        return f"-XX:SharedArchiveFile={archive}"
    prune(archive.parent, "spark-*.jsa*")  # those of another Java or Spark (a folder of $CATEGORIES_JVM_ARCHIVE)
    _build_in_background(archive)
    return ""


def _build_in_background(archive: Path) -> None:
    """Start :func:`build` in a process of its own (niced, detached), unless another build holds the lock."""
    if not _take_lock(archive):
        return  # a build runs (or failed today), or the folder cannot be written: start as without
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    for variable in ("PYSPARK_SUBMIT_ARGS", "SPARK_LOG_LEVEL", "SPARK_JVM_LOG"):
        env.pop(variable, None)  # the archive is Spark's own classes: a bare local session builds it
    with open(archive.with_name(archive.name + ".log"), "ab") as log:
        subprocess.Popen(  # pylint: disable=consider-using-with  # detached: it outlives this command
            [sys.executable, "-m", __name__, "--detach", str(archive)], env=env, stdin=subprocess.DEVNULL,
            stdout=log, stderr=log, start_new_session=True, close_fds=True)


def _take_lock(archive: Path) -> bool:
    lock = archive.with_name(archive.name + ".lock")
    try:
        archive.parent.mkdir(parents=True, exist_ok=True)
        if lock.exists() and time.time() - lock.stat().st_mtime > BUILD_LOCK_SECONDS:
            lock.unlink(missing_ok=True)
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except OSError:
        return False
    return True


def ensure_archive() -> Optional[Path]:
    """Build this machine's archive now unless it exists (benchmarks: no build running beside what they time)."""
    archive = archive_path()
    if archive is None or archive.is_file():
        return archive
    _take_lock(archive)  # a build in the background meanwhile cannot take it; this one replaces its result
    build(archive)
    return archive


def build(archive: Path) -> None:
    """Write ``archive``: a local session runs a job like the fleet's and dumps its classes as its JVM exits;
    a second JVM must start and run a job on the result (``-Xshare:on``) before it takes the archive's name."""
    lock = archive.with_name(archive.name + ".lock")
    part = archive.with_name(f"{archive.name}.{os.getpid()}.part")
    try:
        _run_job(f"-XX:ArchiveClassesAtExit={part}")
        if not part.is_file():
            raise RuntimeError(f"the JVM wrote no archive at {part}")
        _run_job(f"-Xshare:on -XX:SharedArchiveFile={part}")
        os.replace(part, archive)
        lock.unlink(missing_ok=True)
    finally:
        part.unlink(missing_ok=True)


def _run_job(option: str) -> None:
    """:data:`_SAMPLE_JOB` in a process whose JVM gets ``option``."""
    completed = subprocess.run([sys.executable, "-c", _SAMPLE_JOB], env={**os.environ, _OPTION: option},
                               timeout=BUILD_TIMEOUT_SECONDS, check=False, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"the JVM with {option} failed (exit {completed.returncode}): {completed.stderr[-2000:]}")


# A small job like the fleet's (CSV with a schema, mapInArrow, partitioned parquet); then the JVM's exit is
# awaited (it writes the archive as it exits, when its stdin closes).
_SAMPLE_JOB = r"""
import shutil, tempfile
from pathlib import Path
from pyspark import SparkContext
from pyspark.sql import functions as F, types as T
from categories_classification.prediction.spark import get_spark

def passthrough(batches):
    yield from batches

folder = Path(tempfile.mkdtemp(prefix="categories_jvm_"))
source = folder / "data.csv"
source.write_text("product_id,f0\n" + "".join(f"p{i},{i}.5\n" for i in range(1000)), encoding="utf-8")
spark = get_spark("categories_jvm_archive")
schema = T.StructType([T.StructField("product_id", T.StringType()), T.StructField("f0", T.DoubleType()),
                       T.StructField("_corrupt", T.StringType())])
frame = (spark.read.csv(str(source), header=True, schema=schema, mode="PERMISSIVE", columnNameOfCorruptRecord="_corrupt")
         .withColumn("client_id", F.lit("sample")).withColumn("date", F.lit("d")))
frame.mapInArrow(passthrough, schema=frame.schema).write.partitionBy("client_id", "date").parquet(str(folder / "out"))
process = SparkContext._gateway.proc
spark.stop()
shutil.rmtree(folder, ignore_errors=True)
process.stdin.close()
process.wait(timeout=300)
assert process.returncode == 0, f"the JVM exited with {process.returncode}"
"""


def _main(argv: list[str]) -> int:
    os.nice(10)  # the archive is for later commands: never slow down the ones running now
    if argv[0] == "--detach":
        argv = argv[1:]
        if os.fork() > 0:  # the build is no descendant of the command that started it
            return 0
    logging.basicConfig(level=logging.INFO)
    build(Path(argv[0]))
    LOGGER.info("JVM class-data archive written: %s", argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
