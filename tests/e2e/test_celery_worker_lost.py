"""The Celery profile for real (PostgreSQL, Redis, Airflow, two Celery workers, MLflow on PostgreSQL): a worker
lost while it runs a training task. The task is retried on the other worker and succeeds; nothing half-written
is served."""
import os
import shutil
import signal
import tempfile
from pathlib import Path

import mlflow
import psutil
import pytest
from mlflow.tracking import MlflowClient

from categories_classification.records import experiment_name
from categories_classification.tracking.artifacts import load_model
from categories_classification.tracking.registry import champion_version
from scripts import services
from scripts.generate_dags import main as generate_dags
from scripts.generate_example_data import ClientSpec, write_client
from scripts.profiles.celery import CeleryStack, Settings, manual_runs_only
from scripts.supervisor import free_ports
from tests.helpers import FEATURES, client_entry, read_manifest, wait_until, write_config

pytestmark = pytest.mark.slow


@pytest.fixture()
def celery_profile(tmp_path, monkeypatch):
    """A started Celery profile on free loopback ports, with client small_a's data and DAGs; always stopped at
    teardown. Yields the stack and the data prefix."""
    if not (services.postgres_available() and services.redis_available() and shutil.which("pipenv")):
        pytest.skip("needs the PostgreSQL 15 server binaries, redis-server and pipenv (see docs/celery.md)")
    data, dags = tmp_path / "data", tmp_path / "dags"
    write_client(ClientSpec("small_a", 101, n_train=900, n_predict=400, n_categories=12), data)
    config = write_config(tmp_path / "clients.yaml", {"small_a": client_entry(n_estimators=300, family="random_forest")})
    assert generate_dags(["--config", str(config), "--output-dir", str(dags)]) == 0
    # Manual runs only, and the DAGs' retry 5 minutes after a failure comes 5 seconds after it: the
    # same flow, in a test's time.
    manual_runs_only(dags, retry_delay="timedelta(seconds=5)")
    # Not under pytest's temp folder: that one is private to root, and PostgreSQL runs as another user.
    run_dir = Path(tempfile.mkdtemp(prefix="categories_celery_tests_"))
    ports = free_ports(4)
    settings = Settings(run_dir=run_dir, dags_folder=dags, airflow_port=ports[0], mlflow_port=ports[1],
                        postgres_port=ports[2], redis_port=ports[3], postgres_url="", redis_url="",
                        workers=2, worker_concurrency=1, data_prefix=data, spark_connect=False,  # training only
                        # A lost worker's task stops heartbeating: found within 20 s instead of 5 min.
                        extra_env={"AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
                                   "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
                                   "SPARK_MASTER": "local[2]"})
    celery = CeleryStack(settings)
    try:
        celery.start()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.mlflow_url)
        mlflow.set_tracking_uri(settings.mlflow_url)
        yield celery, data
    finally:
        celery.stop(quiet=True)
        shutil.rmtree(run_dir, ignore_errors=True)


def _kill_worker_machine(pid: int) -> None:
    """SIGKILL a worker's process group, and its tasks' processes (a BashOperator starts its command in a
    session of its own): all a lost machine takes with it."""
    descendants = psutil.Process(pid).children(recursive=True)
    os.killpg(pid, signal.SIGKILL)
    for process in descendants:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def _runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name(experiment_name("small_a"))
    return [] if experiment is None else client.search_runs([experiment.experiment_id], "tags.stage = 'training'")


def test_a_worker_lost_mid_training_is_retried_on_the_other_worker_and_nothing_half_written_is_served(celery_profile):
    stack, data = celery_profile
    airflow, mlflow_client = stack.client(), MlflowClient()
    run_id = airflow.trigger("small_a-training")
    # The task's MLflow run exists: it is training, on this worker.
    victim = wait_until(lambda: _runs(mlflow_client) and stack.workers_of("small_a-training", run_id).get(1), 300,
                        "the training task started on a worker", interval=0.2)
    assert airflow.state("small_a-training", run_id) == "running"
    _kill_worker_machine(stack.pid(victim))

    assert airflow.wait("small_a-training", run_id, timeout=420) == "success"
    [task] = [ti for ti in airflow.task_instances("small_a-training", run_id) if ti["task_id"] == "train_model"]
    assert task["state"] == "success" and task["try_number"] == 2
    survivor = stack.workers_of("small_a-training", run_id)[2]
    assert survivor != victim

    runs = {run.info.run_id: run for run in _runs(mlflow_client)}
    finished = [run for run in runs.values() if run.info.status == "FINISHED"]
    assert len(runs) == 2 and len(finished) == 1  # the lost attempt's run stays unfinished, never promoted
    champion = champion_version("small_a")
    assert champion is not None and champion.run_id == finished[0].info.run_id
    assert finished[0].data.tags["promotion_decision"] == "promoted"
    model, features = load_model(champion)  # its file is whole: it matches its digest
    assert features == FEATURES and len(model.estimator.estimators_) == 300

    prediction = airflow.trigger("small_a-prediction")
    assert airflow.wait("small_a-prediction", prediction, timeout=420) == "success"
    dates = sorted((data / "products_categories/client_id=small_a").glob("date=*"))
    manifest = read_manifest(data, "small_a", dates[-1].name[len("date="):])
    assert int(manifest["model_version"]) == champion.version and manifest["training_run_id"] == champion.run_id
