"""registry.promotion_lock on PostgreSQL: an advisory lock per client that holds across processes (and machines),
taken on the MLflow database itself (``MLFLOW_TRACKING_URI=postgresql://``) or on ``CATEGORIES_LOCK_URL``."""
import subprocess
import sys
import textwrap
import time

import pytest

from categories_classification import registry
from categories_classification.errors import TrackingError

pytestmark = pytest.mark.slow

_WAITER = textwrap.dedent("""\
    import sys
    from pathlib import Path
    from categories_classification import registry
    with registry.promotion_lock(sys.argv[1]):
        Path(sys.argv[2]).write_text("acquired")
""")


def _waiter(client_id, marker):
    return subprocess.Popen([sys.executable, "-c", _WAITER, client_id, str(marker)])  # pylint: disable=consider-using-with


@pytest.mark.parametrize("where", ["tracking_uri", "lock_url"])
def test_a_second_process_waits_for_the_same_clients_lock_on_postgresql(where, postgres_database, tmp_path,
                                                                        monkeypatch):
    if where == "tracking_uri":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", postgres_database)
        monkeypatch.delenv("CATEGORIES_LOCK_URL", raising=False)
    else:  # the Celery profile: tasks talk to an MLflow server, the lock to its database
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
        monkeypatch.setenv("CATEGORIES_LOCK_URL", postgres_database)
    same, other = tmp_path / "same", tmp_path / "other"
    with registry.promotion_lock("client_0"):
        blocked, free = _waiter("client_0", same), _waiter("client_1", other)
        assert free.wait(timeout=60) == 0 and other.exists()  # another client's gate is not held up
        time.sleep(1.0)
        assert blocked.poll() is None and not same.exists()
    assert blocked.wait(timeout=60) == 0 and same.exists()


def test_the_lock_is_released_when_its_holder_dies(postgres_database, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", postgres_database)
    script = _WAITER.replace('write_text("acquired")', 'write_text("held"); import time; time.sleep(600)')
    holder = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, "-c", script, "client_0", str(tmp_path / "held")])
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "held").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (tmp_path / "held").exists()
    finally:
        holder.kill()  # a training's process lost with the lock held (SIGKILL: nothing runs its finally)
        holder.wait(timeout=30)
    waiter = _waiter("client_0", tmp_path / "after")
    assert waiter.wait(timeout=60) == 0 and (tmp_path / "after").exists()


def test_an_unreachable_lock_database_is_one_line_without_its_password(postgres_database, monkeypatch):
    dead = postgres_database.rsplit("@", 1)[0] + "@127.0.0.1:1/mlflow"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    monkeypatch.setenv("CATEGORIES_LOCK_URL", dead)
    password = dead.split("//", 1)[1].split("@", 1)[0].split(":", 1)[1]
    with pytest.raises(TrackingError) as raised:
        with registry.promotion_lock("client_0"):
            pass
    message = str(raised.value)
    assert message.startswith("client 'client_0': promotion lock at postgresql+psycopg2://***@127.0.0.1:1/mlflow "
                              "failed: ")
    assert password not in message and "\n" not in message
