"""The Celery profile (`scripts/profiles/celery.py`) as it runs, on free loopback ports: every socket of it on
loopback (no log server), its airflow.cfg agreeing with it, the proof of the Airflow flow with every task run by a
Celery worker (`scripts.airflow_e2e.prove_on_celery`, what `make e2e-airflow PROFILE=celery` runs; CI runs it
here), and `stop` ending it with SIGTERM (issues #13, #14, #24)."""
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from scripts import airflow_e2e, services
from scripts.generate_dags import main as generate_dags
from scripts.generate_example_data import ClientSpec, write_client
from scripts.profiles.celery import CeleryStack, Settings
from scripts.supervisor import free_ports
from tests.e2e.conftest import AIRFLOW, wait_until_healthy
from tests.helpers import FEATURES, client_entry, is_loopback, listening_sockets, wait_until, write_config

pytestmark = pytest.mark.slow
DAG_IDS = ["small_a-prediction", "small_a-training"]


@pytest.fixture()
def celery_profile(tmp_path):
    """The whole profile (Spark Connect included) started on free ports; always stopped at teardown."""
    if not (services.postgres_available() and services.redis_available()):
        pytest.skip("needs the PostgreSQL 15 server binaries and redis-server (see docs/celery.md)")
    dags = tmp_path / "dags"
    config = write_config(tmp_path / "clients.yaml", {"small_a": client_entry(features=FEATURES[:2])})
    write_client(ClientSpec("small_a", 11, n_train=600, n_predict=200, n_categories=6), tmp_path / "data")
    assert generate_dags(["--config", str(config), "--output-dir", str(dags)]) == 0
    # Not under pytest's temp folder: that one is private to root, and PostgreSQL runs as another user.
    run_dir = Path(tempfile.mkdtemp(prefix="categories_celery_tests_"))
    ports = free_ports(5)
    settings = Settings(run_dir=run_dir, dags_folder=dags, airflow_port=ports[0], mlflow_port=ports[1],
                        postgres_port=ports[2], redis_port=ports[3], spark_connect_port=ports[4], postgres_url="",
                        redis_url="", workers=2, worker_concurrency=1, data_prefix=tmp_path / "data")
    celery = CeleryStack(settings)
    try:
        celery.start()
        yield celery
    finally:
        celery.stop(quiet=True)
        shutil.rmtree(run_dir, ignore_errors=True)


def test_every_socket_is_on_loopback_a_plain_airflow_agrees_the_flow_runs_on_celery_and_stop_ends_it_with_sigterm(
        celery_profile, tmp_path):
    settings = celery_profile.settings
    wait_until_healthy(settings.airflow_url, 180)
    client = celery_profile.client()
    for dag_id in DAG_IDS:
        client.wait_for_dag(dag_id, 180)
    _wait_for_workers(celery_profile, 180)  # a worker's log server would be up by then
    sockets = listening_sockets(pid for name in celery_profile.process_names()
                                if (pid := celery_profile.pid(name)) is not None)
    expected = {settings.airflow_port, settings.mlflow_port, settings.postgres_port, settings.redis_port,
                settings.spark_connect_port}
    assert expected <= {port for _, port in sockets}, sockets
    assert [f"{address}:{port} ({command})" for (address, port), command in sockets.items()
            if not is_loopback(address)] == []

    # What a user types in another shell: only where the home is. airflow.cfg holds the profile's database.
    plain = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AIRFLOW_HOME": str(settings.airflow_home)}
    listing = subprocess.run([AIRFLOW, "dags", "list", "--output", "json"], env=plain, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300, check=False)
    assert listing.returncode == 0, listing.stderr[-2000:]
    listed = json.loads(next(line for line in listing.stdout.splitlines() if line.startswith("[")))
    assert sorted(dag["dag_id"] for dag in listed) == DAG_IDS

    # The proof of the flow: a promotion starts the prediction, a lost gate does not, each run on a Celery worker.
    proof = airflow_e2e.prove_on_celery(celery_profile, "small_a")
    assert list(Path(proof["output"]).glob("*.parquet"))

    started = time.monotonic()
    killed = celery_profile.stop(quiet=True)
    assert killed == [] and time.monotonic() - started < 60


def _wait_for_workers(celery: CeleryStack, timeout: float) -> None:
    """Wait until every Celery worker says it is ready (its log)."""
    logs = [celery.supervisor.log(name) for name in celery.settings.worker_names()]
    wait_until(lambda: all(log.exists() and " ready." in log.read_text(encoding="utf-8", errors="replace")
                           for log in logs), timeout, f"the Celery workers ready (see {logs})", interval=2)
