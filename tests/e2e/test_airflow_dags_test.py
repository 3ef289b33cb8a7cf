"""`airflow dags test` on generated DAGs: the BashOperator really runs the CLI through pipenv."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from scripts.generate_dags import main as generate_dags
from scripts.generate_example_data import ClientSpec, write_client

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


@pytest.fixture()
def airflow_env(tmp_path):
    """A temporary AIRFLOW_HOME (migrated), DAGs folder, DATA_PREFIX and MLflow store."""
    pipenv = shutil.which("pipenv")
    if pipenv is None:
        pytest.fail("pipenv is not on PATH: the DAGs run the CLI with `pipenv run` (make init-pipenv installs it)")
    write_client(ClientSpec("e2e_client", 7, n_train=700, n_predict=300, n_categories=9), tmp_path / "data")
    config = tmp_path / "clients.yaml"
    config.write_text("e2e_client:\n  features: [f0, f1, f2, f3, f4]\n  params: {n_estimators: 8}\n", encoding="utf-8")
    assert generate_dags(["--config", str(config), "--output-dir", str(tmp_path / "dags")]) == 0
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "PIPENV_ACTIVE", "VIRTUAL_ENV"))}
    env.update(
        AIRFLOW_HOME=str(tmp_path / "airflow_home"),
        AIRFLOW__CORE__DAGS_FOLDER=str(tmp_path / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        CATEGORIES_PROJECT_DIR=str(ROOT),
        DATA_PREFIX=str(tmp_path / "data"),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        SPARK_MASTER="local[2]",
        PATH=os.pathsep.join([str(Path(pipenv).parent), env.get("PATH", "")]),
    )
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    return env, tmp_path


def _dags_test(env, dag_id):
    result = subprocess.run([AIRFLOW, "dags", "test", dag_id, "2026-11-23"], env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "state=success" in result.stdout + result.stderr
    return result.stdout + result.stderr


def test_training_then_prediction_dag_run_the_cli(airflow_env):
    env, tmp_path = airflow_env
    log = _dags_test(env, "e2e_client-training")
    assert "e2e_client: registered e2e_client_model version 1" in log
    versions = MlflowClient(env["MLFLOW_TRACKING_URI"]).search_model_versions("name = 'e2e_client_model'")
    assert [int(v.version) for v in versions] == [1]

    log = _dags_test(env, "e2e_client-prediction")
    assert "with e2e_client_model version 1" in log
    output = pd.read_parquet(tmp_path / "data/products_categories/client_id=e2e_client/date=2026-11-23")
    assert len(output) == 5 * 300 and (output.groupby("product_id").size() == 5).all()
