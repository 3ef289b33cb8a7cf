"""The Spark session: local mode with sensible defaults, a cluster, or a shared Spark Connect service.

``SPARK_REMOTE`` (``sc://host:port``, Spark's own variable) connects to a running Spark Connect
service instead of starting a JVM; otherwise ``SPARK_MASTER`` picks the master (default
``local[*]``). On a Connect service, every process running the same package shares one server-side
session (its id derived from the package's digest and the day, see :func:`_connect`): the package
is shipped once per version, not per command, and the session's Python workers (sklearn imported,
models loaded) serve the next command warm. Any setting already given the standard way (``spark-submit --conf``,
``PYSPARK_SUBMIT_ARGS``) wins over the defaults below. Code that must work both ways uses only
what both sessions offer (no ``sparkContext``): see :func:`ship_file` and :func:`is_connect`.
"""
import hashlib
import io
import os
import socket
import sys
import tempfile
import uuid
import threading
import warnings
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from pyspark import SparkConf, SparkContext
from pyspark.errors import PySparkException
from pyspark.sql import SparkSession
from pyspark.sql.connect.client.retries import DefaultPolicy

from categories_classification.config import seconds_setting
from categories_classification.errors import InfrastructureError, connection_reason, error_text
from categories_classification.prediction import jvm
from categories_classification.scratch import mark_used

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # categories_classification/
DEFAULT_CONNECT_PORT = 15002  # Spark Connect's own default
CONNECT_PROBE_SECONDS = 5.0
# The shared session's conf key naming the package digest shipped into it (absent: not shipped yet).
PACKAGE_CONF = "categories.package_digest"
# Ids of closed sessions stay refused by the service (SESSION_CLOSED): the next generations are tried.
SESSION_GENERATIONS = 4
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
    jvm.JAVA_OPTIONS: f"-Dlog4j.configurationFile={(Path(__file__).with_name('log4j2.properties')).as_uri()}",
}


def get_spark(app_name: str = "categories_classification") -> SparkSession:
    """Return the active (or default) session or build one (``SPARK_REMOTE``, else ``SPARK_MASTER`` or ``local[*]``)."""
    with _BUILDING:  # one session per process, whichever thread asks first
        existing = _existing()
        if existing is not None:
            return existing
        remote = os.environ.get("SPARK_REMOTE")
        if remote:
            return _connect(remote)
        return _classic(app_name)


def start_session(app_name: str = "categories_classification") -> "Future[SparkSession]":
    """:func:`get_spark` in a thread: the JVM starts while the caller does other work (MLflow, planning)."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spark-start")
    try:
        return executor.submit(_warm_session, app_name)
    finally:
        executor.shutdown(wait=False)


def _warm_session(app_name: str) -> SparkSession:
    """:func:`get_spark`; a session this process started also gets its Python workers started, with their imports."""
    session = get_spark(app_name)
    if shares_this_disk(session) and session.sparkContext.applicationId not in _WARMED:
        _WARMED.add(session.sparkContext.applicationId)
        warm_workers(session, session.sparkContext.defaultParallelism)
    return session


def warm_workers(session: SparkSession, workers: int) -> None:
    """One small job over ``workers`` partitions: each (reused) Python worker imports what scoring needs."""
    # pylint: disable-next=import-outside-toplevel  # the workers' module, only where a job is run
    from categories_classification.prediction.scoring import warm_up

    session.range(0, workers, 1, workers).mapInArrow(warm_up, "id long").collect()


def _existing() -> Optional[SparkSession]:
    try:
        return SparkSession.active()  # this thread's session, or the one another thread built
    except PySparkException:
        return None


def _classic(app_name: str) -> SparkSession:
    given = _given_conf()
    master = os.environ.get("SPARK_MASTER") or given.get("spark.master") or "local[*]"
    conf = {"spark.master": master, "spark.app.name": app_name, **DEFAULT_CONF}
    if _on_this_machine(master):
        # Local mode or a cluster on loopback (make spark-cluster): loopback only, and workers
        # run the very interpreter (venv) of the driver.
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
        # PySpark reads the worker interpreter from this variable only (not from the conf).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    settings = {key: value for key, value in conf.items() if not given.contains(key)}
    # The JVM's own output (the "Using incubator modules" warning at every start, task failures with
    # their Java stack traces) goes to a log file unless SPARK_LOG_LEVEL is set (--verbose sets it).
    jvm.launch(settings, app_name, quiet=not os.environ.get("SPARK_LOG_LEVEL"))
    session = SparkSession.builder.config(map=settings).getOrCreate()  # pylint: disable=no-member  # a class property
    session.sparkContext.setLogLevel(os.environ.get("SPARK_LOG_LEVEL", "ERROR"))
    _ship_package(session)
    return session


_BUILDING = threading.Lock()
_WARMED: set[str] = set()  # the applications whose workers were started


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


def shares_this_disk(session: SparkSession) -> bool:
    """True for a classic session whose executors run on this machine (local mode, a loopback cluster)."""
    return not is_connect(session) and _on_this_machine(session.sparkContext.master)


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


def _connect(remote: str) -> SparkSession:
    """The shared session of this package on the Spark Connect service at ``remote``; one clear line if nothing answers.

    Every process running the same package (the same :func:`package_digest`) on the same UTC day
    uses the same server-side session: the package is shipped into it once (its conf
    :data:`PACKAGE_CONF` says so), and its Python workers, with their imports and loaded models,
    are reused by the next command (Spark Connect gives each session its own workers). Another
    package version gets another session, so a worker never mixes two versions. The session is
    never released by a client (others may be using it): the service expires it when idle. An
    id the service has closed is refused for good: the next of :data:`SESSION_GENERATIONS` ids is
    tried, then a session of this process alone. A ``session_id`` given in ``SPARK_REMOTE`` is
    used as it is. (No application name: the session is not this command's, and setting one would
    be a call to the service before the session is known to be open.)
    """
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
    if not os.environ.get("SPARK_LOG_LEVEL"):  # --verbose shows them
        warnings.filterwarnings("ignore", message=r"\[RETRIES_EXCEEDED\]")
    if ";session_id=" in remote:
        urls = [remote]
    else:
        urls = [with_session_id(remote, session_id) for session_id in
                [*session_ids(package_digest(), SESSION_GENERATIONS), str(uuid.uuid4())]]
    for url in urls[:-1]:
        session = _remote_session(url)
        try:
            return _with_package(session)
        except PySparkException as exc:
            if not _session_closed(exc):
                raise
            _leave(session)
    return _with_package(_remote_session(urls[-1]))


def _with_package(session: SparkSession) -> SparkSession:
    """``session``, with this package shipped into it unless it holds it already (one cheap call to know)."""
    digest = package_digest()
    if session.conf.get(PACKAGE_CONF, None) != digest:
        _ship_package(session)
        session.conf.set(PACKAGE_CONF, digest)
    return session


def _remote_session(url: str) -> SparkSession:
    """A new client of the server-side session ``url`` names (created there by its first call), with our retries."""
    policy = retry_policy(timeout_seconds())
    session = SparkSession.builder.remote(url).create()  # pylint: disable=no-member  # no call to the service yet
    session.release_session_on_close = False  # shared: stopping this client must not close it for the others
    session.client.set_retry_policies([policy])
    _POLICIES[id(session)] = policy
    return session


def _leave(session: SparkSession) -> None:
    """Close this process's client of ``session`` (the server-side session stays as it is)."""
    _POLICIES.pop(id(session), None)
    session.release_session_on_close = False
    session.stop()


def _session_closed(error: BaseException) -> bool:
    """True if the service refused the session id because that session was closed (released or expired)."""
    return "SESSION_CLOSED" in error_text(error)


def session_ids(digest: str, count: int, day: Optional[str] = None) -> list[str]:
    """The ids of the shared session of package ``digest`` on ``day`` (default: today, UTC), in the order tried.

    The day in the id bounds how many closed generations a command may have to skip (a service
    expires an idle session after an hour by default): a daily run starts afresh.
    """
    day = day or datetime.now(timezone.utc).date().isoformat()
    return [str(uuid.UUID(bytes=hashlib.sha256(f"categories_classification/{digest}/{day}/{generation}".encode()).digest()[:16],
                          version=4)) for generation in range(count)]


def with_session_id(remote: str, session_id: str) -> str:
    """``sc://host:port[/;params]`` with ``session_id`` among its parameters."""
    base, _, params = remote.partition("/;")
    return f"{base.rstrip('/')}/;" + ";".join([*filter(None, params.split(";")), f"session_id={session_id}"])


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
    next wait; stopping the session closes its channel, so its exit hook makes no call at all. The
    server-side session is not released (it is shared, see :func:`_connect`).
    """
    if not is_connect(session):
        return
    policy = _POLICIES.pop(id(session), None)
    if policy is not None:
        policy.max_retries = 0
    else:
        session.client.set_retry_policies([DefaultPolicy(max_retries=0)])
    session.release_session_on_close = False
    session.stop()  # best effort, never raises (pyspark's word)


def package_digest() -> str:
    """The SHA-256 of the package's Python files (their paths and bytes): names what is shipped to the workers."""
    if not _DIGEST:
        digest = hashlib.sha256()
        for relative, content in _package_files():
            digest.update(f"{relative}\0{len(content)}\0".encode())
            digest.update(content)
        _DIGEST.append(digest.hexdigest())
    return _DIGEST[0]


_DIGEST: list[str] = []  # package_digest, computed once per process


def _package_files() -> list[tuple[str, bytes]]:
    """``(path inside the archive, bytes)`` of every Python file of the package, sorted."""
    return [((Path("categories_classification") / source.relative_to(PACKAGE_DIR)).as_posix(), source.read_bytes())
            for source in sorted(PACKAGE_DIR.rglob("*.py"))]


def package_archive(folder: Path) -> Path:
    """The package as a zip in ``folder``, named by its digest; the same files always give the same bytes.

    Fixed dates and modes: two checkouts of one version ship identical archives (a Connect
    service refuses a second, different file under a name it already holds).
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for relative, content in _package_files():
            entry = zipfile.ZipInfo(relative, date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            bundle.writestr(entry, content)
    archive = folder / _archive_name()
    archive.write_bytes(buffer.getvalue())
    return archive


def _ship_package(session: SparkSession) -> None:
    # Workers (local, on a cluster or behind Spark Connect) import
    # categories_classification.prediction.scoring; shipping the package as a zip makes that work
    # whatever the workers' working directory or PYTHONPATH.
    if is_connect(session):
        with tempfile.TemporaryDirectory(prefix="categories_pkg_") as folder:
            session.addArtifacts(str(package_archive(Path(folder))), pyfile=True)
    else:
        # One file per package version, kept (workers of this session read it while it runs).
        folder = jvm.scratch_folder()
        archive = folder / _archive_name()
        if archive.is_file():
            mark_used(archive)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder, prefix="package_") as staging:
                os.replace(package_archive(Path(staging)), archive)
        session.sparkContext.addPyFile(str(archive))


def _archive_name() -> str:
    return f"categories_classification-{package_digest()[:16]}.zip"
