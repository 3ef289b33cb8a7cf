"""promotion_lock on PostgreSQL: an advisory lock per client that holds across processes (and machines),
taken on the MLflow database itself (``MLFLOW_TRACKING_URI=postgresql://``) or on ``CATEGORIES_LOCK_URL``."""
import pytest

from categories_classification.tracking.locks import promotion_lock
from categories_classification.errors import TrackingError
from tests.helpers import assert_one_gate_at_a_time_per_client, lock_events, lock_taker, wait_until

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("where", ["tracking_uri", "lock_url"])
def test_a_second_process_waits_for_the_same_clients_lock_on_postgresql(where, postgres_database, tmp_path,
                                                                        monkeypatch):
    if where == "tracking_uri":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", postgres_database)
        monkeypatch.delenv("CATEGORIES_LOCK_URL", raising=False)
    else:  # the Celery profile: tasks talk to an MLflow server, the lock to its database
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
        monkeypatch.setenv("CATEGORIES_LOCK_URL", postgres_database)
    assert_one_gate_at_a_time_per_client(tmp_path)


def test_the_lock_is_released_when_its_holder_dies(postgres_database, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", postgres_database)
    holder = lock_taker("client_0", tmp_path / "held.log", hold=600)
    try:
        wait_until(lambda: "enter" in lock_events(tmp_path / "held.log"), 60, "the holder taking client_0's lock")
    finally:
        holder.kill()  # a training's process lost with the lock held (SIGKILL: nothing runs its finally)
        holder.wait(timeout=30)
    waiter = lock_taker("client_0", tmp_path / "after.log")
    assert waiter.wait(timeout=60) == 0 and "exit" in lock_events(tmp_path / "after.log")


def test_an_unreachable_lock_database_is_one_line_without_its_password(postgres_database, monkeypatch):
    dead = postgres_database.rsplit("@", 1)[0] + "@127.0.0.1:1/mlflow"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    monkeypatch.setenv("CATEGORIES_LOCK_URL", dead)
    password = dead.split("//", 1)[1].split("@", 1)[0].split(":", 1)[1]
    with pytest.raises(TrackingError) as raised:
        with promotion_lock("client_0"):
            pass
    message = str(raised.value)
    assert message.startswith("client 'client_0': promotion lock at postgresql+psycopg2://***@127.0.0.1:1/mlflow "
                              "failed: ")
    assert password not in message and "\n" not in message
