"""Throwaway Airflows: `airflow dags test` runs, and local stacks with their own folders and ports."""
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

from scripts._processes import free_port
from scripts.generate_dags import main as generate_dags
from scripts.local_stack import Stack, start_mlflow, stop

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


@pytest.fixture()
def make_airflow_env(tmp_path: Path) -> Callable[..., dict[str, str]]:
    """Build the environment of a migrated temporary Airflow whose DAGs come from ``config_text``.

    ``path_first`` is put at the front of PATH (where the DAGs find ``pipenv``).
    """
    def build(config_text: str, path_first: str, **extra: str) -> dict[str, str]:
        config = tmp_path / "clients.yaml"
        config.write_text(config_text, encoding="utf-8")
        assert generate_dags(["--config", str(config), "--output-dir", str(tmp_path / "dags")]) == 0
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("AIRFLOW", "PIPENV_ACTIVE", "VIRTUAL_ENV"))}
        env.update(
            AIRFLOW_HOME=str(tmp_path / "airflow_home"),
            AIRFLOW__CORE__DAGS_FOLDER=str(tmp_path / "dags"),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            CATEGORIES_PROJECT_DIR=str(ROOT),
            PATH=os.pathsep.join([path_first, env.get("PATH", "")]),
        )
        env.update(extra)
        subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
        return env

    return build


def dags_test(env: dict[str, str], dag_id: str, conf: Optional[dict] = None) -> str:
    """`airflow dags test <dag_id> 2026-11-23` (with the run's ``conf``); asserts success, returns the log."""
    result = subprocess.run([AIRFLOW, "dags", "test", dag_id, "2026-11-23",
                             *(["--conf", json.dumps(conf)] if conf is not None else [])],
                            env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "state=success" in result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.fixture()
def stack_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a local stack of its own: temp AIRFLOW_HOME, DAGs folder, run dir, store; free ports."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW__", "MLFLOW_TRACKING"))}
    for name in ("dags", "data", "run", "store"):
        (tmp_path / name).mkdir()
    env.update(AIRFLOW_HOME=str(tmp_path / "airflow_home"), DAGS_FOLDER=str(tmp_path / "dags"),
               STACK_RUN_DIR=str(tmp_path / "run"), MLFLOW_STORE_DIR=str(tmp_path / "store"),
               DATA_PREFIX=str(tmp_path / "data"), AIRFLOW_PORT=str(free_port()), MLFLOW_PORT=str(free_port()),
               SPARK_CONNECT_PORT=str(free_port()), PIPENV_VENV_IN_PROJECT="1")
    return env


@contextlib.contextmanager
def running_stack(env: dict[str, str], action: str = "start") -> Iterator[Stack]:
    """`scripts.local_stack start` (or ``start_mlflow``) in ``env``; always `stop` after, within about 90 s."""
    stack = Stack.from_env(env)
    try:
        if action == "start":
            subprocess.run([sys.executable, "-m", "scripts.local_stack", "start"], env=env, cwd=ROOT, check=True,
                           capture_output=True, timeout=600)
        else:
            start_mlflow(stack)
        yield stack
    finally:
        stop(stack)


def wait_until_healthy(airflow_url: str, timeout: float) -> None:
    """Wait until Airflow's health endpoint calls every component healthy (they heartbeat once started)."""
    deadline = time.monotonic() + timeout
    health: dict = {}
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{airflow_url}/api/v2/monitor/health", timeout=10) as response:  # nosec: loopback
            health = json.loads(response.read())
        if all(health.get(part, {}).get("status") == "healthy"
               for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")):
            return
        time.sleep(2)
    raise AssertionError(f"Airflow at {airflow_url} not healthy within {timeout:.0f}s: {health}")
