"""How the tracking store is reached: MLflow pointed at it once per command, every request bounded in
time, and MLflow's failures told as one line naming the store (without credentials)."""
import os
from contextlib import contextmanager
from typing import Iterator, Optional

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from categories_classification.config import seconds_setting
from categories_classification.errors import ModelNotFoundError, TrackingError, describe_os_error, one_line
from categories_classification.tracking.locks import file_lock, lock_file
from categories_classification.tracking.uri import display_tracking_uri, sqlite_file, tracking_uri

# How long one MLflow request may take in all, retries included, before a command fails (seconds).
TIMEOUT_VARIABLE = "CATEGORIES_MLFLOW_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 30.0
# The SQLite stores this process has created or migrated (a train-all worker trains many clients into one).
_READY_STORES: set[str] = set()


def configure_tracking() -> str:
    """Point MLflow's fluent API at :func:`~categories_classification.tracking.uri.tracking_uri`
    (called by entry points, never on import).

    A SQLite store is created (or migrated) under an exclusive file lock: two commands starting
    at once on a new store would otherwise both run MLflow's schema migrations, and one would
    fail with "duplicate column name" (seen with parallel DAG runs on a fresh install).
    """
    uri = tracking_uri()
    for name, value in http_limits(timeout_seconds()).items():
        os.environ.setdefault(name, value)  # what the user set wins
    mlflow.set_tracking_uri(uri)
    database = sqlite_file(uri)
    if database is not None and not (uri in _READY_STORES and database.exists()):
        database.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(lock_file(database, "store")), tracking_errors(None):
            MlflowClient(uri).search_experiments(max_results=1)
        _READY_STORES.add(uri)
    return uri


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
        raise TrackingError(f"MLflow at {display_tracking_uri()} failed: {detail}", client_id) from exc
