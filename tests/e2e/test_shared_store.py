"""Issue #15: the CLI on the SQLite store and the stack's MLflow server share one store, in both orders.

The server is started exactly as `make start-airflow` starts it (`scripts.profiles.standalone.start_mlflow`);
the CLI runs once through it (what a DAG's task does) and once on the store directly (what
`make demo` does), each time training (whose promotion gate loads the champion the other side
logged) and predicting.
"""
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from scripts.generate_example_data import ClientSpec, write_client
from tests.e2e.conftest import running_mlflow
from tests.helpers import run_cli

pytestmark = pytest.mark.slow
CLIENT = "small_a"


def _train(env: dict[str, str], date: str) -> None:
    run_cli(["trainer", f"--client_id={CLIENT}", '--features=["f0", "f1", "f2", "f3", "f4"]',
             '--model_params={"n_estimators": 5}', f"--training_date={date}"], env, check=True)


def _predict(env: dict[str, str], date: str) -> None:
    run_cli(["predictor", f"--client_id={CLIENT}", f"--inference_date={date}"], env, check=True)


@pytest.mark.parametrize("server_first", [True, False], ids=["dag_then_cli", "cli_then_dag"])
def test_the_cli_and_the_stacks_server_read_each_others_models(stack_env, server_first):
    store, data = Path(stack_env["MLFLOW_STORE_DIR"]), Path(stack_env["DATA_PREFIX"])
    write_client(ClientSpec(CLIENT, 101, n_train=900, n_predict=400, n_categories=12), data)
    direct = {**stack_env, "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}"}
    through_server = {**direct, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{stack_env['MLFLOW_PORT']}"}
    if not server_first:
        _train(direct, "2026-11-20")
    with running_mlflow(stack_env):
        _train(through_server, "2026-11-21")
        _predict(through_server, "2026-11-21")
    _train(direct, "2026-11-22")
    _predict(direct, "2026-11-22")

    client = MlflowClient(direct["MLFLOW_TRACKING_URI"])
    versions = client.search_model_versions(f"name = '{CLIENT}_model'")
    assert sorted(int(version.version) for version in versions) == ([1, 2] if server_first else [1, 2, 3])
    outputs = {path.name for path in (data / f"products_categories/client_id={CLIENT}").glob("date=*")}
    assert outputs == {"date=2026-11-21", "date=2026-11-22"}
    # Whoever created the experiment, its artifacts are local files beside the store.
    location = client.get_experiment_by_name(f"categories_{CLIENT}").artifact_location
    assert location.startswith((store / "mlartifacts").as_uri())
