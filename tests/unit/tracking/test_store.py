"""MLflow's HTTP bounds, the timeout variable, and the retry of a lost database connection, without a store."""
import sqlite3
from contextlib import closing

import psycopg2
import pytest
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import OperationalError

from categories_classification.errors import ConfigError, TrackingError
from categories_classification.tracking.store import (
    DEFAULT_TIMEOUT_SECONDS,
    TIMEOUT_VARIABLE,
    DatabaseLostError,
    connection_lost,
    http_limits,
    is_sql_database,
    retrying,
    timeout_seconds,
    write_ahead_log,
)


@pytest.mark.parametrize("budget", [6.0, 12.0, 30.0, 120.0])
def test_http_limits_bound_one_request_to_the_budget(budget):
    limits = http_limits(budget)
    retries, factor = int(limits["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]), int(limits["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    jitter, timeout = float(limits["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"]), int(limits["MLFLOW_HTTP_REQUEST_TIMEOUT"])
    # urllib3: no sleep after the first failure, then factor * 2^(n-1) + up to jitter.
    worst = (retries + 1) * timeout + sum(factor * 2 ** (n - 1) + jitter for n in range(2, retries + 1))
    assert worst <= budget and timeout >= 1
    assert retries == (2 if budget >= 12 else 0)


def test_the_timeout_defaults_and_reads_the_variable(monkeypatch):
    monkeypatch.delenv(TIMEOUT_VARIABLE, raising=False)
    assert timeout_seconds() == DEFAULT_TIMEOUT_SECONDS
    monkeypatch.setenv(TIMEOUT_VARIABLE, " 7.5 ")
    assert timeout_seconds() == 7.5


@pytest.mark.parametrize("raw", ["abc", "0", "-5", "inf", "nan"])
def test_a_bad_timeout_names_the_variable_and_what_was_found(monkeypatch, raw):
    monkeypatch.setenv(TIMEOUT_VARIABLE, raw)
    with pytest.raises(ConfigError, match=rf"CATEGORIES_MLFLOW_TIMEOUT: expected a positive number of seconds, found '{raw}'"):
        timeout_seconds()


# --- a lost database connection (MLflow on PostgreSQL), retried within the budget -------------------------
DATABASE = "postgresql+psycopg2://mlflow:s3cret@127.0.0.1:5433/mlflow"


class _Clock:
    """A fake monotonic clock that the fake sleep moves on."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _lost() -> Exception:
    """What MLflow raises when PostgreSQL goes away mid-session: its exception, from SQLAlchemy's, from libpq's."""
    driver = OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly\n\tThis probably means"))
    try:
        raise MlflowException(str(driver), error_code="TEMPORARILY_UNAVAILABLE") from driver
    except MlflowException as exc:
        return exc


def _flaky(failures: int, error=_lost):
    calls = []

    def operation():
        calls.append(1)
        if len(calls) <= failures:
            raise error()
        return "done"

    return operation, calls


@pytest.fixture()
def on_postgres(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", DATABASE)
    monkeypatch.setenv(TIMEOUT_VARIABLE, "10")
    retrying(None, lambda: None)  # a success: no database of this process is given up on
    yield
    retrying(None, lambda: None)


@pytest.mark.usefixtures("on_postgres")
def test_a_connection_lost_for_a_few_seconds_is_retried_with_backoff():
    clock = _Clock()
    operation, calls = _flaky(3)
    assert retrying("c", operation, clock.sleep, lambda: clock.now) == "done"
    assert len(calls) == 4 and clock.sleeps == [0.5, 1.0, 2.0]


@pytest.mark.usefixtures("on_postgres")
def test_a_longer_outage_fails_within_the_budget_on_one_line_without_the_password():
    clock = _Clock()
    operation, calls = _flaky(1000)
    with pytest.raises(DatabaseLostError) as raised:
        retrying("c", operation, clock.sleep, lambda: clock.now)
    assert sum(clock.sleeps) <= 10 and len(calls) > 3
    message = str(raised.value)
    assert message.startswith("client 'c': MLflow's database at postgresql+psycopg2://***@127.0.0.1:5433/mlflow was "
                              "lost and did not come back within 10 s (CATEGORIES_MLFLOW_TIMEOUT): server closed the "
                              "connection unexpectedly"), message
    assert "s3cret" not in message and "\n" not in message
    # The clean-up after it (and a worker's next client) is not held up a second time, until the database answers.
    again, calls = _flaky(1000)
    with pytest.raises(DatabaseLostError):
        retrying("c", again, clock.sleep, lambda: clock.now)
    assert len(calls) == 1
    back, calls = _flaky(0)
    assert retrying("c", back, clock.sleep, lambda: clock.now) == "done"
    assert retrying("c", _flaky(1)[0], clock.sleep, lambda: clock.now) == "done"  # waits again after a success


@pytest.mark.usefixtures("on_postgres")
def test_other_failures_are_not_retried():
    operation, calls = _flaky(1, lambda: MlflowException("RESOURCE_ALREADY_EXISTS", error_code="RESOURCE_ALREADY_EXISTS"))
    with pytest.raises(TrackingError):
        retrying("c", operation, _Clock().sleep)
    assert len(calls) == 1


def test_a_sqlite_store_is_not_retried(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    operation, calls = _flaky(1)
    with pytest.raises(TrackingError):
        retrying("c", operation, _Clock().sleep)
    assert len(calls) == 1
    assert not is_sql_database("sqlite:///mlflow.db") and not is_sql_database("http://h:5000")
    assert is_sql_database(DATABASE)


def test_beside_a_tracking_server_the_lock_database_is_retried_and_named(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("CATEGORIES_LOCK_URL", DATABASE)
    monkeypatch.setenv(TIMEOUT_VARIABLE, "3")
    clock = _Clock()
    with pytest.raises(DatabaseLostError, match=r"^client 'c': the promotion lock's database at "
                                                r"postgresql\+psycopg2://\*\*\*@127.0.0.1:5433/mlflow was lost"):
        retrying("c", _flaky(1000)[0], clock.sleep, lambda: clock.now)
    assert retrying("c", _flaky(0)[0], clock.sleep, lambda: clock.now) == "done"
    # An MLflow server's own failure is not a lost database connection: not retried here.
    http, calls = _flaky(1, lambda: TrackingError("MLflow at http://127.0.0.1:5000 failed: 503"))
    with pytest.raises(TrackingError):
        retrying("c", http, clock.sleep, lambda: clock.now)
    assert len(calls) == 1


def test_a_lost_lock_session_counts_as_a_lost_connection():
    try:
        try:
            raise psycopg2.OperationalError("terminating connection due to administrator command")
        except psycopg2.OperationalError:
            raise TrackingError("promotion lock at postgresql://***@h:1/db was lost while it was held", "c") from None
    except TrackingError as exc:
        assert connection_lost(exc)
    assert not connection_lost(TrackingError("MLflow at x failed: RESOURCE_DOES_NOT_EXIST"))


def _journal_mode(database) -> str:
    with closing(sqlite3.connect(database)) as connection:
        return connection.execute("PRAGMA journal_mode").fetchone()[0]


def test_a_sqlite_store_is_put_in_write_ahead_log_mode_and_keeps_it(tmp_path):
    database = tmp_path / "mlflow.db"
    with closing(sqlite3.connect(database)) as connection:
        connection.execute("CREATE TABLE runs (id TEXT)")
    write_ahead_log(database)
    write_ahead_log(database)  # already: nothing to change
    assert _journal_mode(database) == "wal"


def test_a_store_held_by_another_connection_is_left_in_its_mode(tmp_path):
    database = tmp_path / "mlflow.db"
    with closing(sqlite3.connect(database, isolation_level=None)) as holder:
        holder.execute("CREATE TABLE runs (id TEXT)")
        holder.execute("BEGIN EXCLUSIVE")
        write_ahead_log(database)  # told at INFO, never raised
        holder.execute("ROLLBACK")
    assert _journal_mode(database) == "delete"
