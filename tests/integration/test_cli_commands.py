"""The CLI as users and Airflow run it: a subprocess, environment variables, exit codes."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import FEATURES

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _cli(args, env, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "categories_classification_cli.py"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture()
def cli_env(small_data, tmp_path):
    env = dict(os.environ)
    env.update(DATA_PREFIX=str(small_data), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
               SPARK_MASTER="local[2]")
    return env


def test_trainer_then_predictor(cli_env, small_data):
    trained = _cli(["trainer", "--client_id=small_a", f"--features={FEATURES}".replace("'", '"'),
                    '--model_params={"n_estimators": 12}', "--training_date=2026-11-23T00:00:00+00:00"], cli_env)
    assert trained.returncode == 0, trained.stderr
    assert "small_a: registered small_a_model version 1" in trained.stdout

    predicted = _cli(["predictor", "--client_id=small_a", "--inference_date=2026-11-23T00:00:00+00:00"], cli_env)
    assert predicted.returncode == 0, predicted.stderr
    assert "with small_a_model version 1" in predicted.stdout
    output = pd.read_parquet(small_data / "products_categories/client_id=small_a/date=2026-11-23")
    assert (output.groupby("product_id").size() == 5).all()


def test_all_commands_report_each_client_and_continue_past_a_failure(cli_env, tmp_path):
    config = tmp_path / "clients.yaml"
    config.write_text(
        "small_a:\n  features: [f0, f1, f2, f3, f4]\n  params: {n_estimators: 8}\n"
        "small_b:\n  features: [f0, f1, f2, f3, f4]\n  params: {n_estimators: 8}\n"
        "small_z:\n  features: [f0, f1, f2, f3, f4]\n",  # no data: must fail alone
        encoding="utf-8",
    )
    cli_env["CONFIG_FILE"] = str(config)
    trained = _cli(["train-all", "--training_date=2026-11-23"], cli_env)
    assert trained.returncode == 1
    assert "Training summary" in trained.stdout
    for client_id, status in (("small_a", "ok"), ("small_b", "ok"), ("small_z", "failed")):
        assert any(client_id in line and status in line for line in trained.stdout.splitlines())
    assert "Error: client 'small_z': file" in trained.stderr and "not found" in trained.stderr
    assert "small_a: ok in" in trained.stderr and "small_z: FAILED in" in trained.stderr  # progress, per client
    header = next(line for line in trained.stdout.splitlines() if "client" in line and "status" in line)
    for column in ("rows", "version", "champion?", "test top-5 acc", "seconds"):
        assert column in header

    predicted = _cli(["predict-all", "--inference_date=2026-11-23"], cli_env)
    assert predicted.returncode == 1
    assert "Error: client 'small_z': no registered model" in predicted.stderr
    assert any("small_a" in line and "ok" in line for line in predicted.stdout.splitlines())


def test_unreachable_tracking_server_is_one_line(cli_env):
    cli_env.update(MLFLOW_TRACKING_URI="http://127.0.0.1:9", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                   MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    result = _cli(["trainer", "--client_id=small_a", '--features=["f0"]', "--model_params={}",
                   "--training_date=2026-11-23"], cli_env, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: client 'small_a': MLflow at http://127.0.0.1:9 failed")
    assert "Traceback" not in result.stderr
