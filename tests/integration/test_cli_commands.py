"""The CLI as users and Airflow run it: a subprocess, environment variables, exit codes."""
import json
import os

import pytest

from categories_classification.records import DAG_ID_TAG, DAG_RUN_ID_TAG, NOT_CHAMPION_EXIT_CODE
from tests.helpers import client_entry, read_output, run_cli, train_args, write_config

pytestmark = pytest.mark.slow


@pytest.fixture()
def cli_env(small_data, tmp_path):
    env = dict(os.environ)
    env.update(DATA_PREFIX=str(small_data), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
               SPARK_MASTER="local[2]")
    return env


def test_trainer_then_predictor(cli_env, small_data):
    trained = run_cli(train_args("small_a", params='{"n_estimators": 12}', date="2026-11-23T00:00:00+00:00"), cli_env)
    assert trained.returncode == 0, trained.stderr
    assert "small_a: registered small_a_model version 1" in trained.stdout

    predicted = run_cli(["predictor", "--client_id=small_a", "--inference_date=2026-11-23T00:00:00+00:00"], cli_env)
    assert predicted.returncode == 0, predicted.stderr
    assert "with small_a_model version 1" in predicted.stdout
    output = read_output(small_data, "small_a")
    assert (output.groupby("product_id").size() == 5).all()


def test_all_commands_report_each_client_and_continue_past_a_failure(cli_env, tmp_path):
    # small_z has no data: it must fail alone.
    config = write_config(tmp_path / "clients.yaml", {"small_a": client_entry(8), "small_b": client_entry(8),
                                                      "small_z": client_entry()})
    cli_env["CONFIG_FILE"] = str(config)
    trained = run_cli(["train-all", "--training_date=2026-11-23"], cli_env)
    assert trained.returncode == 1
    assert "Training summary" in trained.stdout
    for client_id, status in (("small_a", "ok"), ("small_b", "ok"), ("small_z", "failed")):
        assert any(client_id in line and status in line for line in trained.stdout.splitlines())
    assert "Error: client 'small_z': file" in trained.stderr and "not found" in trained.stderr
    assert "small_a: ok in" in trained.stderr and "small_z: FAILED in" in trained.stderr  # progress, per client
    header = next(line for line in trained.stdout.splitlines() if "client" in line and "status" in line)
    for column in ("rows", "version", "champion?", "test top-5 acc", "seconds"):
        assert column in header

    predicted = run_cli(["predict-all", "--inference_date=2026-11-23"], cli_env)
    assert predicted.returncode == 1
    assert "Error: client 'small_z': no registered model" in predicted.stderr
    assert any("small_a" in line and "ok" in line for line in predicted.stdout.splitlines())


def test_unreachable_tracking_server_is_one_line(cli_env):
    cli_env.update(MLFLOW_TRACKING_URI="http://127.0.0.1:9", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                   MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    result = run_cli(train_args("small_a", features=["f0"]), cli_env, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: client 'small_a': MLflow at http://127.0.0.1:9 failed")
    assert "Traceback" not in result.stderr


def test_champion_from_run_publishes_only_the_dag_runs_own_promotion(cli_env):
    def publish(dag_run_id: str):
        return run_cli(["champion-from-run", "--client_id=small_a", "--dag_id=small_a_training",
                        f"--dag_run_id={dag_run_id}"], cli_env)

    nothing = publish("run_1")
    assert nothing.returncode == NOT_CHAMPION_EXIT_CODE and "small_a: no champion: nothing to publish" in nothing.stdout
    # As the training DAG's task runs it: Airflow's run context becomes the run's tags.
    airflow = {**cli_env, "MLFLOW_RUN_CONTEXT": json.dumps({DAG_ID_TAG: "small_a_training", DAG_RUN_ID_TAG: "run_1"})}
    trained = run_cli(train_args("small_a", params='{"n_estimators": 8}'), airflow)
    assert trained.returncode == 0, trained.stderr
    mine = publish("run_1")
    assert mine.returncode == 0, mine.stderr
    assert mine.stdout == "small_a: small_a_model version 1 was promoted by small_a_training run run_1: publishing it\n"
    other = publish("run_2")
    assert other.returncode == NOT_CHAMPION_EXIT_CODE
    assert other.stdout == ("small_a: champion is small_a_model version 1, from small_a_training run run_1, not promoted "
                            "by small_a_training run run_2: nothing to publish\n")
