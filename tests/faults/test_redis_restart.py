"""Redis, the Celery profile's broker, killed (SIGKILL) and restarted on its port within seconds while training
tasks run and others wait in its queue (issue #25, case 6). The queued messages come back with Redis (its
append-only file), the running tasks carry on, the workers reconnect: every DAG run succeeds within minutes, each
task on its first try, none requeued by the scheduler (``task_queued_timeout``), and each client's MLflow record is
whole."""
import shutil
from collections import Counter
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
import redis
from mlflow.tracking import MlflowClient

from categories_classification.records import experiment_name
from categories_classification.tracking.registry import champion_version
from scripts import services
from scripts.generate_dags import main as generate_dags
from scripts.generate_example_data import ClientSpec, write_client
from scripts.profiles.celery import CeleryStack, Settings, broker_recovery, manual_runs_only
from scripts.supervisor import free_ports
from tests.helpers import client_entry, wait_until, write_config

pytestmark = pytest.mark.slow
CLIENTS = [f"redis_{number}" for number in range(3)]  # 3 trainings on 2 workers x 1 slot: 1 waits in the queue
OUTAGE = 5.0  # seconds from the kill to the restart
QUEUE = "default"  # Airflow's [operators] default_queue: the Redis list the queued messages wait in


@pytest.fixture()
def celery_profile(tmp_path, monkeypatch):
    """The Celery profile on free loopback ports (no Spark service: training only), with the training DAGs of
    CLIENTS; always stopped at teardown."""
    if not (services.postgres_available() and services.redis_available() and shutil.which("pipenv")):
        pytest.skip("needs the PostgreSQL 15 server binaries, redis-server and pipenv (see docs/celery.md)")
    data, dags = tmp_path / "data", tmp_path / "dags"
    for number, client in enumerate(CLIENTS):
        write_client(ClientSpec(client, 200 + number, n_train=600, n_predict=50, n_categories=6), data)
    config = write_config(tmp_path / "clients.yaml",
                          {client: client_entry(n_estimators=30, family="random_forest") for client in CLIENTS})
    assert generate_dags(["--config", str(config), "--output-dir", str(dags)]) == 0
    for prediction in dags.glob("*_prediction.py"):  # a promotion would start a prediction: not this test's
        prediction.unlink()
    manual_runs_only(dags)
    # Not under pytest's temp folder: that one is private to root, and PostgreSQL runs as another user.
    run_dir = Path(tempfile.mkdtemp(prefix="categories_redis_fault_"))
    ports = free_ports(4)
    settings = Settings(run_dir=run_dir, dags_folder=dags, airflow_port=ports[0], mlflow_port=ports[1],
                        postgres_port=ports[2], redis_port=ports[3], postgres_url="", redis_url="",
                        workers=2, worker_concurrency=1, data_prefix=data, spark_connect=False)
    for key in broker_recovery():  # the profile's own recovery settings, whatever this shell says
        monkeypatch.delenv(key, raising=False)
    celery = CeleryStack(settings)
    try:
        celery.start()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.mlflow_url)
        mlflow.set_tracking_uri(settings.mlflow_url)
        yield celery
    finally:
        celery.stop(quiet=True)  # nothing left to stop once the test has stopped it
        shutil.rmtree(run_dir, ignore_errors=True)


def _assert_each_training_record_is_whole() -> None:
    """Each client's training record is whole: one finished run, registered, promoted, the champion."""
    client = MlflowClient()
    for name in CLIENTS:
        experiment = client.get_experiment_by_name(experiment_name(name))
        found = client.search_runs([experiment.experiment_id], "tags.stage = 'training'")
        assert [run.info.status for run in found] == ["FINISHED"], name
        assert found[0].data.tags["promotion_decision"] == "promoted"
        champion = champion_version(name)
        assert champion is not None and champion.run_id == found[0].info.run_id


def _train_model_states(airflow, runs: dict[str, str]) -> list[str]:
    return [ti["state"] for dag_id, run_id in runs.items() for ti in airflow.task_instances(dag_id, run_id)
            if ti["task_id"] == "train_model"]


def test_a_redis_restart_loses_no_queued_task_and_every_run_succeeds_within_minutes(celery_profile):
    stack = celery_profile
    settings, airflow = stack.settings, stack.client()
    broker = redis.Redis.from_url(stack.airflow_env()["AIRFLOW__CELERY__BROKER_URL"], socket_timeout=5)
    runs = {f"{client}-training": airflow.trigger(f"{client}-training") for client in CLIENTS}

    # Every slot busy with a training, the rest waiting in Redis's list.
    wait_until(lambda: Counter(_train_model_states(airflow, runs)) == {"running": 2, "queued": 1}, 300,
               "2 trainings running and 1 queued", interval=0.5)
    waiting = broker.llen(QUEUE)
    stack.supervisor.kill("redis")
    killed = time.monotonic()
    assert waiting >= 1, "no message waited in the queue when Redis was killed"
    time.sleep(max(0.0, OUTAGE - (time.monotonic() - killed)))
    services.start_redis(run_dir=settings.run_dir / "redis", port=settings.redis_port, supervisor=stack.supervisor)
    restarted = time.monotonic()
    assert broker.llen(QUEUE) == waiting  # the queued messages came back with Redis (its append-only file)

    # Within the profile's task_queued_timeout: a lost message's task, requeued only after it (the scheduler's
    # log says so), could not have ended by then.
    bound = float(broker_recovery()["AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT"])
    states = {dag_id: airflow.wait(dag_id, run_id, timeout=bound) for dag_id, run_id in runs.items()}
    took = time.monotonic() - restarted
    print(f"outage {restarted - killed:.1f}s, {waiting} message(s) queued, every run ended {took:.0f}s after")
    assert states == {dag_id: "success" for dag_id in runs}, states
    for dag_id, run_id in runs.items():
        for ti in airflow.task_instances(dag_id, run_id):
            assert ti["state"] in ("success", "skipped") and ti["try_number"] == 1, (dag_id, ti)
    scheduler_log = stack.supervisor.log("scheduler").read_text(encoding="utf-8", errors="replace")
    assert "stuck in queued" not in scheduler_log.lower()

    _assert_each_training_record_is_whole()

    # Everything stops on SIGTERM, within bounds, Redis restarted by the test included.
    started = time.monotonic()
    assert stack.stop(quiet=True) == []
    assert time.monotonic() - started < 120
