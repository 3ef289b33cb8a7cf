"""Throwaway Airflows: `airflow dags test` runs, and local stacks with their own folders and ports."""
import contextlib
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

from scripts.generate_dags import main as generate_dags
from scripts.profiles.standalone import Stack, start_mlflow, stop
from scripts.supervisor import free_ports
from tests.helpers import wait_until

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
    airflow_port, mlflow_port, spark_connect_port = free_ports(3)
    env.update(AIRFLOW_HOME=str(tmp_path / "airflow_home"), DAGS_FOLDER=str(tmp_path / "dags"),
               STACK_RUN_DIR=str(tmp_path / "run"), MLFLOW_STORE_DIR=str(tmp_path / "store"),
               DATA_PREFIX=str(tmp_path / "data"), AIRFLOW_PORT=str(airflow_port), MLFLOW_PORT=str(mlflow_port),
               SPARK_CONNECT_PORT=str(spark_connect_port), PIPENV_VENV_IN_PROJECT="1")
    return env


@contextlib.contextmanager
def running_mlflow(env: dict[str, str]) -> Iterator[Stack]:
    """Only the MLflow server of the standalone profile in ``env``, as `make start-airflow` starts it; always stopped."""
    stack = Stack.from_env(env)
    try:
        start_mlflow(stack)
        yield stack
    finally:
        stop(stack)


def wait_until_healthy(airflow_url: str, timeout: float) -> None:
    """Wait until Airflow's health endpoint calls every component healthy (they heartbeat once started)."""
    def healthy() -> bool:
        with urllib.request.urlopen(f"{airflow_url}/api/v2/monitor/health", timeout=10) as response:  # nosec: loopback
            health = json.loads(response.read())
        return all(health.get(part, {}).get("status") == "healthy"
                   for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"))

    wait_until(healthy, timeout, f"every component of the Airflow at {airflow_url} healthy", interval=2)
