"""A service lost mid-prediction, the pure parts: the Spark Connect deadline, the one line per client, and the
bookkeeping that makes one client's lost MLflow call that client's (no MLflow, no Spark)."""
import pytest
from pyspark.sql.connect.client.retries import DefaultPolicy

from categories_classification.errors import ConfigError, TrackingError, connection_reason, service_lost
from categories_classification.prediction import lineage
from categories_classification.prediction.spark import (DEFAULT_TIMEOUT_SECONDS, TIMEOUT_VARIABLE, retry_policy,
                                                        retry_waits, timeout_seconds)

REFUSED = ("API request to http://127.0.0.1:5999/api/2.0/mlflow/runs/update failed with exception "
           "HTTPConnectionPool(host='127.0.0.1', port=5999): Max retries exceeded (Caused by NewConnectionError("
           "'Failed to establish a new connection: [Errno 111] Connection refused'))")


def test_the_default_deadline_is_60_seconds_and_settable(monkeypatch):
    monkeypatch.delenv(TIMEOUT_VARIABLE, raising=False)
    assert timeout_seconds() == DEFAULT_TIMEOUT_SECONDS == 60
    monkeypatch.setenv(TIMEOUT_VARIABLE, " 12.5 ")
    assert timeout_seconds() == 12.5


@pytest.mark.parametrize("raw", ["0", "-3", "soon", "nan", "inf"])
def test_a_bad_deadline_names_the_variable_and_what_was_found(monkeypatch, raw):
    monkeypatch.setenv(TIMEOUT_VARIABLE, raw)
    with pytest.raises(ConfigError) as caught:
        timeout_seconds()
    assert str(caught.value) == (f"environment variable CATEGORIES_SPARK_TIMEOUT: expected a positive number of "
                                 f"seconds, found {raw!r}")
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("budget", [0.1, 1, 10, 60, 300, 3600])
def test_the_retries_of_one_call_wait_at_most_half_the_deadline(budget):
    policy = retry_policy(budget)
    assert isinstance(policy, DefaultPolicy)
    assert sum(retry_waits(policy)) <= budget / 2
    assert policy.max_retries <= 15  # never more than pyspark's own


def test_the_default_deadline_still_rides_out_a_short_blip():
    policy = retry_policy(DEFAULT_TIMEOUT_SECONDS)
    assert policy.max_retries >= 5 and sum(retry_waits(policy)) >= 10  # a restart of a few seconds is retried


def test_pyspark_default_policy_waits_for_minutes():
    """What the deadline replaces: the default policy alone waits about ten minutes per call."""
    assert sum(retry_waits(DefaultPolicy())) > 9 * 60


@pytest.mark.parametrize("text, reason", [
    ("status = StatusCode.UNAVAILABLE details = \"Connection reset by peer\"", "connection reset"),
    ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:15002: Connection refused",
     "connection refused"),
    ("details = \"Socket closed\"", "connection closed"),
    (REFUSED, "connection refused"),
    ("HTTPConnectionPool(host='127.0.0.1', port=5000): Read timed out. (read timeout=9)", "timed out"),
    ("RESOURCE_DOES_NOT_EXIST: Run 'abc' not found", None),
])
def test_a_lost_connection_is_told_in_a_few_words(text, reason):
    assert connection_reason(text) == reason


def test_the_line_names_the_client_the_service_what_happened_and_what_is_left():
    error = service_lost("client_3", "Spark Connect at sc://127.0.0.1:15002", "during scoring", "connection reset",
                         "2026-12-01")
    assert str(error) == ("client 'client_3': Spark Connect at sc://127.0.0.1:15002 was lost during scoring "
                          "(connection reset); nothing written, the output of 2026-12-01 is left as it was")
    assert error.exit_code == 1 and error.client_id == "client_3"


def _tracking_error(client_id, text):
    error = TrackingError(f"MLflow at http://127.0.0.1:5999 failed: {text}", client_id)
    error.__cause__ = RuntimeError(text)
    return error


def test_a_store_lost_for_one_client_fails_each_later_client_at_once_under_its_own_name(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    book = lineage.Bookkeeping("2026-12-01")
    first = book.client_error("client_0", _tracking_error("client_0", REFUSED), "while recording the prediction's lineage")
    assert str(first) == ("client 'client_0': MLflow at http://127.0.0.1:5999 was lost while recording the "
                          "prediction's lineage (connection refused); nothing written, the output of 2026-12-01 is "
                          "left as it was")
    run = lineage.PredictionRun("client_1", "run1", "local[2]")
    # No call is made once the store is lost (none could answer): the client gets its own line at once.
    later = book.close_finished(run, None, (), 0.0, None)
    assert str(later).startswith("client 'client_1': MLflow at http://127.0.0.1:5999 was lost while recording")
    book.close_failed(run, None)  # left RUNNING for the next command: no wait, no error


def test_a_store_error_that_is_not_a_lost_connection_is_the_clients_own(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    book = lineage.Bookkeeping("2026-12-01")
    error = book.client_error("client_2", _tracking_error(None, "INTERNAL_ERROR: database is locked"), "")
    assert str(error) == "client 'client_2': MLflow at http://127.0.0.1:5999 failed: INTERNAL_ERROR: database is locked"
    assert book.lost is None
