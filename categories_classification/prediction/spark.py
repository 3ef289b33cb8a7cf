"""The Spark session: local mode with sensible defaults, a cluster, or a shared Spark Connect service.

``SPARK_REMOTE`` (``sc://host:port``, Spark's own variable) connects to a running Spark Connect
service instead of starting a JVM; otherwise ``SPARK_MASTER`` picks the master (default
``local[*]``). Any setting already given the standard way (``spark-submit --conf``,
``PYSPARK_SUBMIT_ARGS``) wins over the defaults below. Code that must work both ways uses only
what both sessions offer (no ``sparkContext``): see :func:`ship_file` and :func:`is_connect`.
"""
import os
import socket
import sys
import tempfile
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlparse

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession
from pyspark.sql.connect.client.retries import DefaultPolicy

from categories_classification.config import seconds_setting
from categories_classification.errors import InfrastructureError, connection_reason, error_text

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # categories_classification/
DEFAULT_CONNECT_PORT = 15002  # Spark Connect's own default
CONNECT_PROBE_SECONDS = 5.0
# How long a lost Spark Connect service may keep a command waiting (pyspark's own retries: ~30 min).
TIMEOUT_VARIABLE = "CATEGORIES_SPARK_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_CONF = {
    # mapInArrow moves data as Arrow batches; ~10k rows keep a batch's per-tree predict_proba arrays
    # in cache (fewer CPU cycles per row than larger batches).
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "10000",
    "spark.sql.session.timeZone": "UTC",
    "spark.driver.memory": "2g",
    # Small jobs: the 200-partition shuffle default is made for clusters, not for one client.
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.adaptive.enabled": "true",
    "spark.ui.showConsoleProgress": "false",
    # A batch job: no web UI port to open (enable it with --conf spark.ui.enabled=true).
    "spark.ui.enabled": "false",
    # Python workers are reused across tasks, so each keeps its loaded model (see scoring.py).
    "spark.python.worker.reuse": "true",
    # The output tree holds parquet files only (readers such as Polars take every file of a folder):
    # no _SUCCESS marker (the atomic swap is the completion signal), and no .crc file beside each
    # parquet file (the checksummed local file system writes them; parquet has its own checksums).
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.hadoop.fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem",
    # Quiet JVM logs (warnings, one line each) instead of Spark's INFO banner and stack traces.
    "spark.driver.extraJavaOptions": f"-Dlog4j.configurationFile={(Path(__file__).with_name('log4j2.properties')).as_uri()}",
}


def get_spark(app_name: str = "categories_classification") -> SparkSession:
    """Return the active session or build one (``SPARK_REMOTE``, else ``SPARK_MASTER`` or ``local[*]``)."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    remote = os.environ.get("SPARK_REMOTE")
    if remote:
        return _connect(remote, app_name)
    given = _given_conf()
    builder = SparkSession.builder.appName(app_name)  # pylint: disable=no-member  # builder is a class property
    master = os.environ.get("SPARK_MASTER") or given.get("spark.master") or "local[*]"
    builder = builder.master(master)
    conf = dict(DEFAULT_CONF)
    if _on_this_machine(master):
        # Local mode or a cluster on loopback (make spark-cluster): loopback only, and workers
        # run the very interpreter (venv) of the driver.
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
        # PySpark reads the worker interpreter from this variable only (not from the conf).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    for key, value in conf.items():
        if not given.contains(key):
            builder = builder.config(key, value)
    with _jvm_stderr_to_log(app_name):
        session = builder.getOrCreate()
    session.sparkContext.setLogLevel(os.environ.get("SPARK_LOG_LEVEL", "ERROR"))
    _ship_package(session)
    return session


@contextmanager
def _jvm_stderr_to_log(app_name: str) -> Iterator[None]:
    """Point the stderr of the JVM launched inside the block at a log file (quiet mode only).

    The JVM writes to the terminal on its own (the "Using incubator modules" warning at every
    start, task failures with their Java stack traces) around the one-line errors the CLI
    prints. Unless ``SPARK_LOG_LEVEL`` is set (``--verbose`` sets it), that output goes to
    ``$SPARK_JVM_LOG``, default ``<tmp>/categories_spark/<app>-<pid>.log``. Under spark-submit
    the JVM exists already and keeps its own stderr.
    """
    if os.environ.get("PYSPARK_GATEWAY_PORT") or os.environ.get("SPARK_LOG_LEVEL"):
        yield
        return
    log = Path(os.environ.get("SPARK_JVM_LOG")
               or Path(tempfile.gettempdir()) / "categories_spark" / f"{app_name}-{os.getpid()}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(target, 2)  # the JVM (and the Python workers it forks) inherit this descriptor
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(target)


def _given_conf() -> SparkConf:
    """What spark-submit already set (``--master``, ``--conf``), or nothing when run without it."""
    if os.environ.get("PYSPARK_GATEWAY_PORT"):
        # Under spark-submit the driver JVM is already up and holds those settings; a SparkConf
        # made before connecting to it would be empty (and --master silently become local[*]).
        SparkContext._ensure_initialized()  # pylint: disable=protected-access  # connects, launches nothing
    return SparkConf()


def _on_this_machine(master: str) -> bool:
    """``local[...]``, or a standalone master on loopback (``spark://127.0.0.1:7077``)."""
    if master.startswith("local"):
        return True
    return master.startswith("spark://") and urlparse(master).hostname in ("127.0.0.1", "localhost")


def is_connect(session: SparkSession) -> bool:
    """True for a Spark Connect session (no SparkContext, no JVM in this process)."""
    return not hasattr(session, "_jsc")


def describe(session: SparkSession) -> str:
    """Where the session runs its jobs: the Spark Connect URL, or the master (lineage, messages)."""
    if is_connect(session):
        return os.environ.get("SPARK_REMOTE") or "spark connect"
    return session.sparkContext.master


def ship_file(session: SparkSession, path: Path) -> None:
    """Make ``path`` readable by the session's Python workers as ``SparkFiles.get(path.name)``.

    A file name is shipped once per session: callers name files by their content (a model's
    version and digest), so the same name always means the same bytes.
    """
    key = (id(session), path.name)
    if key in _SHIPPED:
        return
    if is_connect(session):
        session.addArtifacts(str(path), file=True)
    else:
        session.sparkContext.addFile(str(path))
    _SHIPPED.add(key)


_SHIPPED: set[tuple[int, str]] = set()


def _connect(remote: str, app_name: str) -> SparkSession:
    """A session on the Spark Connect service at ``remote``; one clear line if nothing answers there."""
    parsed = urlparse(remote)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or DEFAULT_CONNECT_PORT
    try:
        with socket.create_connection((host, port), timeout=CONNECT_PROBE_SECONDS):
            pass
    except OSError as exc:
        raise InfrastructureError(
            f"Spark Connect service at {host}:{port} (SPARK_REMOTE) is not reachable ({exc.strerror or exc}): "
            "start it (make start-airflow, or python -m scripts.spark_connect start), or unset SPARK_REMOTE "
            "to run Spark in this process") from None
    policy = retry_policy(timeout_seconds())
    session = SparkSession.builder.remote(remote).appName(app_name).getOrCreate()  # pylint: disable=no-member
    session.client.set_retry_policies([policy])
    _POLICIES[id(session)] = policy
    if not os.environ.get("SPARK_LOG_LEVEL"):  # --verbose shows them
        warnings.filterwarnings("ignore", message=r"\[RETRIES_EXCEEDED\]")
    _ship_package(session)
    return session


_POLICIES: dict[int, DefaultPolicy] = {}  # id(session) -> its retry policy (see give_up)


def timeout_seconds() -> float:
    """``$CATEGORIES_SPARK_TIMEOUT`` (seconds, a positive number), else :data:`DEFAULT_TIMEOUT_SECONDS`."""
    return seconds_setting(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT_SECONDS)


def retry_policy(budget: float) -> DefaultPolicy:
    """pyspark's retry policy with its waits cut to at most half of ``budget`` seconds in all (jitter included).

    pyspark retries an unavailable service 15 times with waits of up to 60 s (about 10 minutes per
    call, and a command makes several). The other half of the budget is for what follows the
    loss: the failed call's cleanup, the session's release, the exit.
    """
    limit = budget / 2
    policy = DefaultPolicy(max_retries=0, max_backoff=max(50, int(limit * 1000 / 3)))
    while policy.max_retries < 15 and sum(retry_waits(DefaultPolicy(
            max_retries=policy.max_retries + 1, max_backoff=policy.max_backoff))) <= limit:
        policy.max_retries += 1
    return policy


def retry_waits(policy: DefaultPolicy) -> list[float]:
    """The longest waits (seconds, jitter included) ``policy`` makes before giving up on a call."""
    waits, wait = [], float(policy.initial_backoff)
    for _ in range(policy.max_retries or 0):
        jitter = policy.jitter if wait >= policy.min_jitter_threshold else 0
        waits.append((wait + jitter) / 1000)
        wait = min(float(policy.max_backoff or wait), wait * policy.backoff_multiplier)
    return waits


def connection_lost(error: BaseException) -> Optional[str]:
    """Why a Spark Connect call failed if the service went away (``connection reset``...), else None."""
    status = getattr(error, "getGrpcStatusCode", None)
    if status is None or getattr(status(), "name", "") != "UNAVAILABLE":
        return None
    return connection_reason(error_text(error)) or "unavailable"


def give_up(session: SparkSession) -> None:
    """Stop waiting on a lost Spark Connect service: no more retries, the session stopped (nothing left at exit).

    Every retry loop still running (a release in the background, pyspark's exit hook) ends at its
    next wait; stopping the session closes its channel, so its exit hook makes no call at all.
    """
    if not is_connect(session):
        return
    policy = _POLICIES.pop(id(session), None)
    if policy is not None:
        policy.max_retries = 0
    else:
        session.client.set_retry_policies([DefaultPolicy(max_retries=0)])
    session.stop()  # best effort, never raises (pyspark's word); its release now fails at once


def _ship_package(session: SparkSession) -> None:
    # Workers (local, on a cluster or behind Spark Connect) import
    # categories_classification.prediction.scoring; shipping the package as a zip makes that work
    # whatever the workers' working directory or PYTHONPATH.
    archive = Path(tempfile.mkdtemp(prefix="categories_pkg_")) / "categories_classification.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for source in sorted(PACKAGE_DIR.rglob("*.py")):
            bundle.write(source, Path("categories_classification") / source.relative_to(PACKAGE_DIR))
    if is_connect(session):
        session.addArtifacts(str(archive), pyfile=True)
    else:
        session.sparkContext.addPyFile(str(archive))
