"""An unreachable MLflow fails a command within a bounded time, on one line (no variable set by the test)."""
import os
import socket
import time

import pytest

from tests.helpers import run_cli

pytestmark = pytest.mark.slow


def _env(uri: str, **extra: str) -> dict[str, str]:
    # The bound must come from the project, not from variables a test (or a previous test) set.
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("MLFLOW_HTTP_REQUEST_") and key != "CATEGORIES_MLFLOW_TIMEOUT"}
    return {**env, "MLFLOW_TRACKING_URI": uri, **extra}


def _fails_on_one_line(args: list[str], env: dict[str, str], uri: str) -> float:
    started = time.monotonic()
    result = run_cli(args, env, timeout=170)
    seconds = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: client 'small_a': MLflow at {uri} failed"), result.stderr
    return seconds


def test_a_closed_port_fails_within_the_default_bound():
    uri = "http://127.0.0.1:9"  # discard port: nothing listens, connections are refused
    assert _fails_on_one_line(["list-models", "--client_id=small_a"], _env(uri), uri) < 45


def test_a_server_that_never_answers_fails_within_the_configured_bound():
    with socket.socket() as silent:  # accepts connections (backlog) but never reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        seconds = _fails_on_one_line(["list-models", "--client_id=small_a"], _env(uri, CATEGORIES_MLFLOW_TIMEOUT="6"), uri)
    assert seconds < 6 + 15  # the budget, plus the CLI's own start-up
