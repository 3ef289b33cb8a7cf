"""`airflow dags test` on generated DAGs: the BashOperator really runs the CLI through pipenv."""
import shutil
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from categories_classification.records import experiment_name
from scripts.generate_example_data import ClientSpec, write_client
from tests.e2e.conftest import dags_test
from tests.helpers import read_manifest, run_cli, train_args

pytestmark = pytest.mark.slow


@pytest.fixture()
def airflow_env(make_airflow_env, tmp_path):
    """A temporary AIRFLOW_HOME (migrated), DAGs folder, DATA_PREFIX and MLflow store."""
    pipenv = shutil.which("pipenv")
    if pipenv is None:
        pytest.fail("pipenv is not on PATH: the DAGs run the CLI with `pipenv run` (make init-pipenv installs it)")
    write_client(ClientSpec("e2e_client", 7, n_train=700, n_predict=300, n_categories=9), tmp_path / "data")
    env = make_airflow_env(
        "e2e_client:\n  features: [f0, f1, f2, f3, f4]\n  params: {n_estimators: 8}\n  drift_threshold: 0.001\n",
        str(Path(pipenv).parent),
        DATA_PREFIX=str(tmp_path / "data"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        SPARK_MASTER="local[2]")
    return env, tmp_path


def test_training_then_prediction_dag_run_the_cli(airflow_env):
    env, tmp_path = airflow_env
    log = dags_test(env, "e2e_client-training")
    assert "e2e_client: registered e2e_client_model version 1" in log
    # The first version is promoted: publish_champion succeeds, its asset event would start the prediction.
    assert "e2e_client_model version 1 was promoted by e2e_client-training run" in log
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (version,) = client.search_model_versions("name = 'e2e_client_model'")
    assert int(version.version) == 1
    assert client.get_run(version.run_id).data.tags["airflow_dag_id"] == "e2e_client-training"

    log = dags_test(env, "e2e_client-prediction")
    assert "with e2e_client_model version 1" in log
    output = pd.read_parquet(tmp_path / "data/products_categories/client_id=e2e_client/date=2026-11-23")
    assert len(output) == 5 * 300 and (output.groupby("product_id").size() == 5).all()


def test_the_prediction_dag_and_predict_all_score_a_client_with_the_same_settings(airflow_env):
    env, tmp_path = airflow_env
    run_cli(train_args("e2e_client", params='{"n_estimators": 8}'), env, check=True)
    dags_test(env, "e2e_client-prediction")  # writes 2026-11-23
    run_cli(["predict-all", f"--config={tmp_path / 'clients.yaml'}", "--inference_date=2026-11-24"], env, check=True)

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(experiment_name("e2e_client"))
    runs = {run.data.tags["inference_date"]: run.data.tags
            for run in client.search_runs([experiment.experiment_id], "tags.stage = 'prediction'")}
    manifests = {date: read_manifest(tmp_path / "data", "e2e_client", date) for date in runs}
    assert sorted(runs) == ["2026-11-23", "2026-11-24"]
    # The config's threshold (0.001, not the predictor's default 0.2) on both paths, in the run and the manifest.
    assert {tags["drift_threshold"] for tags in runs.values()} == {"0.001"}
    assert {manifest["drift"]["threshold"] for manifest in manifests.values()} == {0.001}
