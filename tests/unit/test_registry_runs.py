"""registry's run hygiene without a store: which RUNNING runs are abandoned, and MLflow's HTTP bounds."""
import os
import subprocess
import sys

import pytest

from categories_classification import registry
from categories_classification.errors import ConfigError

HOST = "worker-1"
NOW = 1_800_000_000.0


def _started_at(alive: dict[int, float]):
    return alive.get


def test_a_run_whose_process_is_gone_is_abandoned():
    tags = {registry.HOST_TAG: HOST, registry.PID_TAG: "4242"}
    assert registry.abandoned(tags, NOW - 60, NOW, HOST, _started_at({})) == f"process 4242 on {HOST} is gone"


def test_a_run_whose_process_still_runs_is_left_alone_however_old():
    tags = {registry.HOST_TAG: HOST, registry.PID_TAG: "4242"}
    assert registry.abandoned(tags, NOW - 60, NOW, HOST, _started_at({4242: NOW - 70})) is None
    assert registry.abandoned(tags, NOW - 10 * 86400, NOW, HOST, _started_at({4242: NOW - 10 * 86400 - 5})) is None
    assert registry.abandoned(tags, NOW - 60, NOW, HOST, _started_at({4242: 0.0})) is None  # start unknown


def test_a_reused_pid_does_not_keep_a_dead_run_open():
    tags = {registry.HOST_TAG: HOST, registry.PID_TAG: "4242"}
    reason = registry.abandoned(tags, NOW - 600, NOW, HOST, _started_at({4242: NOW - 30}))
    assert reason is not None and "newer process" in reason


@pytest.mark.parametrize("tags", [{registry.HOST_TAG: "other-host", registry.PID_TAG: "4242"}, {}],
                         ids=["other host", "no tags"])
def test_runs_of_other_hosts_are_closed_only_after_the_limit(tags):
    never_asked = _started_at({})  # another host's pid says nothing here
    limit = registry.FOREIGN_RUN_LIMIT_SECONDS
    assert registry.abandoned(tags, NOW - limit + 60, NOW, HOST, never_asked) is None
    reason = registry.abandoned(tags, NOW - limit - 3600, NOW, HOST, never_asked)
    assert reason is not None and "over the 24 h limit" in reason


def test_process_started_knows_a_live_process_and_a_reaped_one():
    assert registry.process_started(os.getpid()) > 0
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    assert registry.process_started(int(child.stdout)) is None


@pytest.mark.parametrize("budget", [6.0, 12.0, 30.0, 120.0])
def test_http_limits_bound_one_request_to_the_budget(budget):
    limits = registry.http_limits(budget)
    retries, factor = int(limits["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]), int(limits["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    jitter, timeout = float(limits["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"]), int(limits["MLFLOW_HTTP_REQUEST_TIMEOUT"])
    # urllib3: no sleep after the first failure, then factor * 2^(n-1) + up to jitter.
    worst = (retries + 1) * timeout + sum(factor * 2 ** (n - 1) + jitter for n in range(2, retries + 1))
    assert worst <= budget and timeout >= 1
    assert retries == (2 if budget >= 12 else 0)


def test_configure_tracking_sets_the_bounds_as_defaults_only(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv(registry.TIMEOUT_VARIABLE, "60")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")  # the user's choice
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"):
        monkeypatch.delenv(name, raising=False)
    registry.configure_tracking()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == registry.http_limits(60)["MLFLOW_HTTP_REQUEST_TIMEOUT"]


@pytest.mark.parametrize("raw", ["abc", "0", "-5", "inf", "nan"])
def test_a_bad_timeout_names_the_variable_and_what_was_found(monkeypatch, raw):
    monkeypatch.setenv(registry.TIMEOUT_VARIABLE, raw)
    with pytest.raises(ConfigError, match=rf"CATEGORIES_MLFLOW_TIMEOUT: expected a positive number of seconds, found '{raw}'"):
        registry.timeout_seconds()
