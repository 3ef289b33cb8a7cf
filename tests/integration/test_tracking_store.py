"""What needs a real store or a real process: configure_tracking's bounds on a SQLite store, process start times."""
import os
import subprocess
import sys

from categories_classification.tracking.runs import process_started
from categories_classification.tracking.store import TIMEOUT_VARIABLE, configure_tracking, http_limits


def test_process_started_knows_a_live_process_and_a_reaped_one():
    assert process_started(os.getpid()) > 0
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    assert process_started(int(child.stdout)) is None


def test_configure_tracking_sets_the_bounds_as_defaults_only(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv(TIMEOUT_VARIABLE, "60")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")  # the user's choice
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"):
        monkeypatch.delenv(name, raising=False)
    configure_tracking()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == http_limits(60)["MLFLOW_HTTP_REQUEST_TIMEOUT"]
