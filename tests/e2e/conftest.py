"""A throwaway Airflow (AIRFLOW_HOME, DAGs folder, database) for `airflow dags test` runs."""
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from scripts.generate_dags import main as generate_dags

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


def dags_test(env: dict[str, str], dag_id: str) -> str:
    """`airflow dags test <dag_id> 2026-11-23`; asserts success, returns the log."""
    result = subprocess.run([AIRFLOW, "dags", "test", dag_id, "2026-11-23"], env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "state=success" in result.stdout + result.stderr
    return result.stdout + result.stderr
