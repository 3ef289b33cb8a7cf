"""The promotion lock: "read the champion, compare, move the alias" one training at a time per client.

A file lock (flock) beside a SQLite store, or a PostgreSQL advisory lock; no MLflow import.
"""
import fcntl
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import ContextManager, Iterator
from urllib.parse import urlparse

from categories_classification.errors import TrackingError, one_line
from categories_classification.records import model_name
from categories_classification.tracking.uri import is_postgres, masked, sqlite_file, tracking_uri

# Where the promotion lock lives when the tracking URI is a server (http): a PostgreSQL database.
LOCK_URL_VARIABLE = "CATEGORIES_LOCK_URL"


def promotion_lock(client_id: str) -> ContextManager[None]:
    """Serialises "read the champion, compare, move the alias" between trainings of one client.

    A file lock beside a SQLite store covers every process of this machine (parallel DAG runs,
    a manual ``trainer``). With a PostgreSQL store (``MLFLOW_TRACKING_URI=postgresql://...``), or
    a tracking server whose tasks are given ``CATEGORIES_LOCK_URL=postgresql://...``, it is a
    PostgreSQL advisory lock keyed by the client: it holds across machines (Celery workers), and
    the server frees it if the training's process dies. A tracking server without a lock URL
    relies on the training DAG's ``max_active_runs=1``.
    """
    uri = tracking_uri()
    database = sqlite_file(uri)
    if database is not None:
        return file_lock(lock_file(database, model_name(client_id)))
    lock_url = uri if is_postgres(uri) else os.environ.get(LOCK_URL_VARIABLE, "")
    if is_postgres(lock_url):
        return _advisory_lock(lock_url, model_name(client_id), client_id)
    return nullcontext()


@contextmanager
def _advisory_lock(url: str, key: str, client_id: str) -> Iterator[None]:
    """A PostgreSQL session advisory lock on ``hashtext(key)``, held on its own connection for the block."""
    import psycopg2  # pylint: disable=import-outside-toplevel  # only PostgreSQL stores need the driver

    parsed = urlparse(url)
    dsn = parsed._replace(scheme="postgresql").geturl()  # libpq knows no SQLAlchemy "+driver" suffix
    try:
        connection = psycopg2.connect(dsn, connect_timeout=10, application_name="categories promotion lock")
    except psycopg2.Error as exc:
        raise TrackingError(f"promotion lock at {masked(url)} failed: {one_line(exc)}", client_id) from None
    try:
        connection.autocommit = True  # a session lock: no transaction left open while the gate runs
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"categories.promotion:{key}",))
        except psycopg2.Error as exc:
            raise TrackingError(f"promotion lock at {masked(url)} failed: {one_line(exc)}", client_id) from None
        yield
        # A restart of the server ends the session, and the lock with it: then the block did not
        # run alone, and is run again by the caller's retry (the error keeps libpq's in its context).
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except psycopg2.Error as exc:
            raise TrackingError(f"promotion lock at {masked(url)} was lost while it was held: {one_line(exc)}",
                                client_id) from None
    finally:
        # Closing the session releases the lock, also when the block raised or the lock query failed.
        connection.close()


def lock_file(database: Path, name: str) -> Path:
    """``<store dir>/.<store file>.locks/<name>.lock``: every lock of a store in one hidden folder."""
    folder = database.with_name(f".{database.name}.locks")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.lock"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) on ``path``, held for the ``with`` block."""
    with open(path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
