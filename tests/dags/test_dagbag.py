"""The committed dags/ as Airflow itself loads it (real DagBag)."""
import ast
from datetime import timedelta

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import Asset

from categories_classification.config import load_config
from categories_classification.records import NOT_CHAMPION_EXIT_CODE
from scripts.generate_dags import champion_asset
from tests.helpers import ROOT

CLIENTS = [client.client_id for client in load_config(ROOT / "conf" / "clients_config.yaml")]


@pytest.fixture(scope="module")
def dagbag():
    return DagBag(dag_folder=str(ROOT / "dags"), safe_mode=False)


def test_no_import_errors_and_two_dags_per_client(dagbag):
    assert dagbag.import_errors == {}
    assert sorted(dagbag.dag_ids) == sorted(f"{c}-{kind}" for c in CLIENTS for kind in ("training", "prediction"))
    assert len(dagbag.dag_ids) == 20


@pytest.mark.parametrize("client_id", CLIENTS)
def test_training_dag(dagbag, client_id):
    dag = dagbag.dags[f"{client_id}-training"]
    assert set(dag.tags) == {"training", client_id}
    assert dag.timetable.delta == timedelta(days=30) and not dag.catchup and dag.max_active_runs == 1
    assert dag.doc_md and client_id in dag.doc_md
    task, publish = dag.get_task("train_model"), dag.get_task("publish_champion")
    assert len(dag.tasks) == 2 and task.downstream_task_ids == {"publish_champion"}
    assert type(task).__name__ == "BashOperator" and task.retries == 2 and task.retry_delay == timedelta(minutes=5)
    assert task.cwd == str(ROOT) and task.append_env and "MLFLOW_RUN_CONTEXT" in task.env
    assert task.bash_command.startswith(
        f"pipenv run python categories_classification_cli.py trainer --client_id={client_id} "
        "--features='[\"f0\", \"f1\", \"f2\", \"f3\", \"f4\"]' --model_params='{")
    assert task.bash_command.endswith(
        "--training_date='{{ (dag_run.logical_date or dag_run.run_after) | ts }}' "
        '${CATEGORIES_CONF_MODEL_PARAMS:+"--model_params=$CATEGORIES_CONF_MODEL_PARAMS"}')
    # Only a run whose model took the champion alias emits the asset: "no" (99) skips the task.
    assert publish.outlets == [_champion(client_id)] and publish.skip_on_exit_code == [NOT_CHAMPION_EXIT_CODE]
    assert publish.bash_command == f"pipenv run python categories_classification_cli.py champion-from-run --client_id={client_id}"


@pytest.mark.parametrize("client_id", CLIENTS)
def test_prediction_dag(dagbag, client_id):
    dag = dagbag.dags[f"{client_id}-prediction"]
    assert set(dag.tags) == {"prediction", client_id}
    # Daily, or as soon as the client's training promoted a new champion (its asset's event).
    assert dag.timetable.__class__.__name__ == "AssetOrTimeSchedule" and not dag.catchup
    assert dag.timetable.timetable.__class__.__name__ == "CronTriggerTimetable"
    assert dag.timetable.timetable.expression == "0 0 * * *" and dag.timetable.asset_condition == _champion(client_id)
    # The docs say what the task serves: the champion alias, not "the newest" version.
    assert f"{client_id}_model@champion" in dag.doc_md and "newest" not in dag.doc_md
    (task,) = dag.tasks
    assert task.retries == 2
    # The client's drift threshold from the config, as predict-all uses it (the committed config sets none: 0.2).
    assert task.bash_command == (f"pipenv run python categories_classification_cli.py predictor --client_id={client_id} "
                                 "--drift_threshold=0.2 --inference_date='{{ (dag_run.logical_date or dag_run.run_after) | ds }}'")


def _champion(client_id: str) -> Asset:
    name, uri = champion_asset(client_id)
    return Asset(name=name, uri=uri)


def test_dag_files_import_nothing_heavy():
    for path in sorted((ROOT / "dags").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        imported = {name.split(".")[0] for node in ast.walk(ast.parse(text)) if isinstance(node, (ast.Import, ast.ImportFrom))
                    for name in ([node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names])}
        assert imported == {"os", "datetime", "airflow"}, path.name
        assert "categories_classification" not in text.split("with DAG(")[0]
        assert "import mlflow" not in text and "import pyspark" not in text and "import pandas" not in text
