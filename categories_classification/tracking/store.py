"""How the tracking store is reached: MLflow pointed at it once per command, every request bounded in
time, a database connection lost for a few seconds retried, and MLflow's failures told as one line
naming the store (without credentials)."""
import logging
import os
import sqlite3
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from categories_classification.config import seconds_setting
from categories_classification.errors import (
    CategoriesError,
    ModelNotFoundError,
    TrackingError,
    describe_os_error,
    first_line,
    one_line,
)
from categories_classification.tracking.locks import LOCK_URL_VARIABLE, file_lock, lock_file
from categories_classification.tracking.uri import display_tracking_uri, masked, sqlite_file, tracking_uri

LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

# How long one MLflow request may take in all, retries included, before a command fails (seconds).
TIMEOUT_VARIABLE = "CATEGORIES_MLFLOW_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 30.0
# Backoff between attempts of an operation whose database connection was lost (seconds, doubling).
FIRST_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS = 0.5, 4.0
# What a lost database connection raises, by the qualified names of the classes in an error's chain
# (SQLAlchemy's, and the driver's below it): the operation is worth another try once it is back.
_CONNECTION_ERRORS = frozenset({
    "sqlalchemy.exc.OperationalError", "sqlalchemy.exc.InterfaceError",
    "psycopg2.OperationalError", "psycopg2.InterfaceError",
})
# Loggers that print a lost connection's stack trace (MLflow's session maker logs it with
# logger.exception, SQLAlchemy's pool when it drops a dead connection): the one line says it.
_STORE_LOGGERS = ("mlflow.store.db.utils", "sqlalchemy.pool")
# The SQL databases this process gave up on (until an operation succeeds again): no second wait.
_GIVEN_UP: set[str] = set()
# The SQLite stores this process has created or migrated (a train-all worker trains many clients into one).
_READY_STORES: set[str] = set()


def configure_tracking(client_id: Optional[str] = None) -> str:
    """Point MLflow's fluent API at :func:`~categories_classification.tracking.uri.tracking_uri`
    (called by entry points, never on import).

    A SQLite store is created (or migrated) under an exclusive file lock: two commands starting
    at once on a new store would otherwise both run MLflow's schema migrations, and one would
    fail with "duplicate column name" (seen with parallel DAG runs on a fresh install).
    A database server (PostgreSQL) is waited for within :func:`timeout_seconds`, and MLflow's
    stores are made then, while it answers (for ``client_id``'s messages).
    """
    uri = tracking_uri()
    budget = timeout_seconds()
    for name, value in http_limits(budget).items():
        os.environ.setdefault(name, value)  # what the user set wins
    # libpq waits forever for a server that does not answer: bound each connection attempt.
    os.environ.setdefault("PGCONNECT_TIMEOUT", str(max(2, int(min(10.0, budget / 3)))))
    quiet_store_logs()
    mlflow.set_tracking_uri(uri)
    if is_sql_database(uri):
        # MLflow creates its engines on first use, retrying 10 times over about 100 s: wait for the
        # database within our own bound first, and have them made while it answers.
        retrying(client_id, lambda: _open_stores(uri))
    database = sqlite_file(uri)
    if database is not None and not (uri in _READY_STORES and database.exists()):
        database.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(lock_file(database, "store")), tracking_errors(None):
            MlflowClient(uri).search_experiments(max_results=1)
            write_ahead_log(database)
        _READY_STORES.add(uri)
    return uri


def write_ahead_log(database: Path) -> None:
    """Put a SQLite store in write-ahead-log mode (once: the mode is kept in the file), if it is not yet.

    Each of MLflow's commits then syncs one file once, instead of a rollback journal and the
    database (a training makes dozens), and readers no longer wait for a writer: two trainings
    side by side (``train-all``'s workers, parallel DAG runs) each go at their own pace. Every process
    using the store must be on this machine (as SQLite's locks already require). If another
    connection holds the store (an MLflow UI reading it), the mode is left as it is, to try next time.
    """
    try:
        with closing(sqlite3.connect(database, timeout=1.0)) as connection:
            if connection.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as exc:
        LOGGER.info("SQLite store %s: left in its journal mode (%s)", database, exc)


def timeout_seconds() -> float:
    """``$CATEGORIES_MLFLOW_TIMEOUT`` (seconds, a positive number), else :data:`DEFAULT_TIMEOUT_SECONDS`."""
    return seconds_setting(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT_SECONDS)


def http_limits(budget: float) -> dict[str, str]:
    """MLflow's HTTP retry and timeout variables that bound one request to about ``budget`` seconds.

    MLflow's defaults (7 retries, backoff factor 2, 120 s per attempt) let a command stall for
    minutes on an unreachable server; Airflow's task retries cover longer outages. urllib3
    sleeps 0 s after the first failure, then ``factor * 2 ** (n - 1)`` plus up to ``jitter``
    seconds: with 2 retries, at most 3 s of sleep and 3 attempts of ``timeout`` seconds each.
    Below 12 s there is no retry: the whole budget goes to one attempt.
    """
    retries, factor, jitter = (2, 1, 1.0) if budget >= 12 else (0, 1, 0.0)
    sleeps = sum(factor * 2 ** (n - 1) + jitter for n in range(2, retries + 1))
    timeout = max(1, int((budget - sleeps) // (retries + 1)))  # MLflow reads an integer
    return {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(factor),
            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": str(jitter), "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout)}


@contextmanager
def tracking_errors(client_id: Optional[str]) -> Iterator[None]:
    """Turn MLflow failures (server unreachable, store locked, ...) into one-line errors."""
    try:
        yield
    except (MlflowException, OSError) as exc:
        detail = describe_os_error(exc) if isinstance(exc, OSError) else one_line(exc)
        if isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ModelNotFoundError(f"MLflow at {display_tracking_uri()}: {detail}", client_id) from exc
        if connection_lost(exc):
            detail = _driver_reason(exc)
        raise TrackingError(f"MLflow at {display_tracking_uri()} failed: {detail}", client_id) from exc
    except CategoriesError:
        raise  # already one line (a database given up on, a missing model)
    except Exception as exc:
        # SQLAlchemy's own error, where MLflow does not wrap it (its stores' set-up).
        if connection_lost(exc):
            raise TrackingError(f"MLflow at {display_tracking_uri()} failed: {_driver_reason(exc)}", client_id) from exc
        raise


class DatabaseLostError(TrackingError):
    """MLflow's database stayed unreachable for the whole budget (retried already: not again)."""


def is_sql_database(uri: str) -> bool:
    """True when ``uri`` is a database server MLflow reaches through SQLAlchemy (not SQLite, not a tracking server)."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    return scheme in ("postgresql", "postgres", "mysql", "mssql")


def quiet_store_logs() -> None:
    """Hide the stack traces MLflow's and SQLAlchemy's store layers log for a lost connection, unless
    the command logs at INFO (``--verbose``): the retry, or the one-line error after it, says what happened."""
    verbose = logging.getLogger().getEffectiveLevel() <= logging.INFO
    for name in _STORE_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if verbose else logging.CRITICAL)


def connection_lost(error: BaseException) -> bool:
    """True when ``error`` (or an error in its chain) is a database connection lost or refused."""
    seen: set[int] = set()
    current: Optional[BaseException] = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if any(f"{cls.__module__}.{cls.__qualname__}" in _CONNECTION_ERRORS for cls in type(current).__mro__):
            return True
        if getattr(current, "connection_invalidated", False):
            return True
        current = current.__cause__ or current.__context__
    return False


def retrying(client_id: Optional[str], operation: Callable[[], T], sleep: Callable[[float], None] = time.sleep,
             clock: Callable[[], float] = time.monotonic) -> T:
    """``operation()``, tried again with backoff while MLflow's database connection is lost, for at most
    :func:`timeout_seconds` after the first loss; then one line naming the database.

    Only a lost connection to a database server is retried here: MLflow's SQL store, or the
    promotion lock's PostgreSQL (``CATEGORIES_LOCK_URL``) beside a tracking server, whose HTTP
    requests have their own retries; a SQLite store is a local file (MLflow waits on its locks).
    The operations given are idempotent, or nearly: a step that failed half-way
    left nothing (one transaction), or is written again with the same values. Once the database
    was given up on, later operations of this process (the failed training's clean-up, a worker's
    next client) get one attempt each until one succeeds: a command waits out an outage once.
    """
    uri = tracking_uri()
    if sqlite_file(uri) is not None:
        with tracking_errors(client_id):
            return operation()
    budget = 0.0 if uri in _GIVEN_UP else timeout_seconds()
    deadline, delay, attempt = None, FIRST_BACKOFF_SECONDS, 0
    while True:
        attempt += 1
        try:
            with tracking_errors(client_id):
                result = operation()
            _GIVEN_UP.discard(uri)
            return result
        except DatabaseLostError:
            raise  # an inner step already waited out its budget: never twice
        except TrackingError as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            if not connection_lost(cause):
                raise
            now = clock()
            deadline = now + budget if deadline is None else deadline
            if now + delay > deadline:
                _GIVEN_UP.add(uri)
                raise DatabaseLostError(
                    f"{_lost_database(uri)} was lost and did not come back within "
                    f"{timeout_seconds():g} s ({TIMEOUT_VARIABLE}): {_driver_reason(cause)}", client_id) from cause
            LOGGER.info("client %s: %s was lost (%s): trying again in %.1f s",
                        client_id or "-", _lost_database(uri), _driver_reason(cause), delay)
            sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)


def _lost_database(uri: str) -> str:
    """Which database a lost connection was to: MLflow's store, else the promotion lock's."""
    if is_sql_database(uri):
        return f"MLflow's database at {masked(uri)}"
    return f"the promotion lock's database at {masked(os.environ.get(LOCK_URL_VARIABLE, ''))}"


def _driver_reason(error: BaseException) -> str:
    """The driver's own words for a lost connection (libpq's first line), without SQLAlchemy's wrapping."""
    current: Optional[BaseException] = error
    for _ in range(20):  # a chain is a few errors long (and never loops forever)
        if current is None:
            break
        original = getattr(current, "orig", None)
        if original is not None:
            return first_line(str(original)) or type(original).__name__
        if type(current).__module__.startswith("psycopg2"):
            return first_line(str(current)) or type(current).__name__
        current = current.__cause__ or current.__context__
    return first_line(str(error))


def _open_stores(uri: str) -> None:
    """One connection to the store's database (closed at once), then MLflow's tracking and registry stores."""
    # Only a database server needs SQLAlchemy here (~0.2 s to import): a task on a tracking server does not pay it.
    import sqlalchemy  # pylint: disable=import-outside-toplevel

    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise TrackingError(f"MLflow's database at {masked(uri)} failed: {_driver_reason(exc)}") from exc
    finally:
        engine.dispose()
    client = MlflowClient(uri)
    client.search_experiments(max_results=1)
    client.search_registered_models(max_results=1)
