"""Issue #13, part 3: a client's prediction runs as soon as its training promotes a new champion.

The training DAG's ``publish_champion`` task emits the client's champion asset only when
``champion-from-run`` says that this DAG run's training took the alias (exit 0); otherwise it
exits 99, the task is skipped and no event is emitted. First that command on a real MLflow store,
then the whole flow on a real stack through Airflow's REST API: ``scripts.airflow_e2e.prove``, the one
proof that `make e2e-airflow` runs too (CI runs it here, for the standalone profile).
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from categories_classification.records import NOT_CHAMPION_EXIT_CODE
from scripts import airflow_e2e
from scripts.generate_dags import main as generate_dags
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

    _train(env, "run_2", json.dumps(airflow_e2e.WEAK_MODEL_PARAMS))  # loses the gate
    code, output = _champion_from_run(env, "run_2")
    assert code == NOT_CHAMPION_EXIT_CODE and "version 1, from small_p-training run run_1, not promoted by" in output
    versions = MlflowClient(env["MLFLOW_TRACKING_URI"]).search_model_versions(f"name = '{CLIENT}_model'")
    assert {int(version.version): version.tags["promotion_decision"] for version in versions} == {
        1: "promoted", 2: "rejected"}


def test_on_other_ports_a_new_dag_file_shows_at_once_a_promotion_starts_the_prediction_and_a_lost_gate_does_not(
        stack_env, tmp_path):
    # The demo config's 20 DAGs (issue #18: the DAG processor's settings for a demo folder) and the proven client's.
    config = tmp_path / "clients.yaml"
    config.write_text((ROOT / "conf" / "clients_config.yaml").read_text(encoding="utf-8")
                      + f"{CLIENT}:\n  features: [f0, f1, f2, f3, f4]\n  params: {{n_estimators: 20}}\n", encoding="utf-8")
    dags, data = Path(stack_env["DAGS_FOLDER"]), Path(stack_env["DATA_PREFIX"])
    assert generate_dags(["--config", str(config), "--output-dir", str(dags)]) == 0
    write_client(ClientSpec(CLIENT, 5, n_train=800, n_predict=300, n_categories=8), data)
    extra = tmp_path / "extra.yaml"
    extra.write_text("client_new:\n  features: [f0, f1]\n", encoding="utf-8")
    assert generate_dags(["--config", str(extra), "--output-dir", str(tmp_path / "extra_dags")]) == 0

    started = time.monotonic()
    with airflow_e2e.standalone_stack(stack_env) as stack:
        assert stack.airflow_port != 8080 and stack.mlflow_port != 5000  # issue #15: tasks follow the ports
        client = stack.client()
        client.wait_for_dag("client_9-prediction", 120)
        staged = dags / ".client_new_training.py.tmp"
        shutil.copyfile(tmp_path / "extra_dags" / "client_new_training.py", staged)
        appeared = time.monotonic()
        os.replace(staged, dags / "client_new_training.py")
        client.wait_for_dag("client_new-training", 60)
        assert time.monotonic() - appeared < 60

        # Raises on any failure: version 2 or more promoted, an asset-triggered prediction run that wrote
        # parquet files with it, on the stack's shared Spark service; a weak retraining starts nothing.
        proof = airflow_e2e.prove(stack, client, CLIENT, data, timeout=600)
        through_server = MlflowClient(stack.mlflow_url)
        assert through_server.search_model_versions(f"name = '{CLIENT}_model'")
        # Local paths, which the CLI on the SQLite store can read too (issue #15).
        assert through_server.get_experiment_by_name(f"categories_{CLIENT}").artifact_location.startswith("file:")
    print(f"stack started, flow proven and stopped in {time.monotonic() - started:.0f}s")

    assert int(proof["version"]) >= 2  # after the first training's (and a scheduled one's, if the DAG owed one)
    assert proof["predicted"].startswith("asset_triggered__")
    assert list(Path(proof["output"]).glob("*.parquet"))
