"""MLflow's HTTP bounds and the timeout variable, computed without a store."""
import pytest

from categories_classification.errors import ConfigError
from categories_classification.tracking.store import DEFAULT_TIMEOUT_SECONDS, TIMEOUT_VARIABLE, http_limits, timeout_seconds


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
