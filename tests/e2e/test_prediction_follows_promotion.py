"""Issue #13, part 3: a client's prediction runs as soon as its training promotes a new champion.

The training DAG's ``publish_champion`` task emits the client's champion asset only when
``champion-from-run`` says that this DAG run's training took the alias (exit 0); otherwise it
exits 99, the task is skipped and no event is emitted. Here that command on a real MLflow store.
"""
import json
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from categories_classification_cli import NOT_CHAMPION_EXIT_CODE
from scripts.generate_example_data import ClientSpec, write_client
from tests.e2e.conftest import ROOT

pytestmark = pytest.mark.slow
CLIENT = "small_p"
FEATURES = '["f0", "f1", "f2", "f3", "f4"]'


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "categories_classification_cli.py"), *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300, check=False)


def _train(env: dict[str, str], dag_run_id: str, params: str) -> None:
    """A training as the DAG's train_model task runs it: MLflow tags the run with the DAG run."""
    context = json.dumps({"airflow_dag_id": f"{CLIENT}-training", "airflow_dag_run_id": dag_run_id})
    result = _cli(["trainer", f"--client_id={CLIENT}", f"--features={FEATURES}", f"--model_params={params}",
                   "--training_date=2026-11-23"], {**env, "MLFLOW_RUN_CONTEXT": context})
    assert result.returncode == 0, result.stderr[-3000:]


def _champion_from_run(env: dict[str, str], dag_run_id: str) -> tuple[int, str]:
    """champion-from-run as the publish_champion task runs it: the DAG run comes from Airflow's task environment."""
    result = _cli(["champion-from-run", f"--client_id={CLIENT}"],
                  {**env, "AIRFLOW_CTX_DAG_ID": f"{CLIENT}-training", "AIRFLOW_CTX_DAG_RUN_ID": dag_run_id})
    return result.returncode, result.stdout + result.stderr


def test_champion_from_run_says_yes_only_to_the_dag_run_whose_training_took_the_alias(tmp_path):
    write_client(ClientSpec(CLIENT, 5, n_train=800, n_predict=100, n_categories=8), tmp_path / "data")
    env = {"DATA_PREFIX": str(tmp_path / "data"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}

    assert _champion_from_run(env, "run_1")[0] == NOT_CHAMPION_EXIT_CODE  # no model at all yet
    _train(env, "run_1", '{"n_estimators": 20}')
    code, output = _champion_from_run(env, "run_1")
    assert code == 0 and "version 1 was promoted by small_p-training run run_1" in output
    assert _champion_from_run(env, "run_0")[0] == NOT_CHAMPION_EXIT_CODE  # another DAG run: not its model

    _train(env, "run_2", '{"n_estimators": 1, "max_depth": 1}')  # loses the gate
    code, output = _champion_from_run(env, "run_2")
    assert code == NOT_CHAMPION_EXIT_CODE and "version 1, from small_p-training run run_1, not promoted by" in output
    versions = MlflowClient(env["MLFLOW_TRACKING_URI"]).search_model_versions(f"name = '{CLIENT}_model'")
    assert {int(version.version): version.tags["promotion_decision"] for version in versions} == {
        1: "promoted", 2: "rejected"}
