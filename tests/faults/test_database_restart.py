"""PostgreSQL restarted while trainings write to it: it is MLflow's backend store itself
(``MLFLOW_TRACKING_URI=postgresql+psycopg2://...``) and the promotion lock's database.

A restart of a few seconds (a fast shutdown, which ends every session, then a start) is retried inside the
deadline: the training, and each client of a 3-client ``train-all``, succeeds with nothing on stderr. An
outage longer than the deadline (``CATEGORIES_MLFLOW_TIMEOUT``) fails within it, on one line naming the
client and the database (password masked); the next training closes the run it left and succeeds.
"""
import json
import os
import shlex
import signal
import subprocess
import time
from contextlib import closing
from pathlib import Path
from urllib.parse import urlparse

import psycopg2
import pytest
from mlflow.tracking import MlflowClient

from categories_classification.records import CHAMPION, CLIENT_ID_TAG, PROMOTION_DECISION_TAG, experiment_name, model_name
from categories_classification.tracking.uri import masked
from scripts.generate_example_data import ClientSpec, write_client
from tests.helpers import DATE, FEATURES, SMALL_CLIENTS, start_cli, train_args, wait_until, write_config

pytestmark = pytest.mark.slow
CLIENTS = (*SMALL_CLIENTS, ClientSpec("small_c", 103, n_train=500, n_predict=100, n_categories=4))
PARAMS = {"n_estimators": 4, "max_leaf_nodes": 16}  # size bounded: no size search, a quick training
FAMILY = "random_forest"
DOWN_SECONDS = 2.5


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("database_restart_data")
    for spec in CLIENTS:
        write_client(spec, root)
    return root


@pytest.fixture(scope="module", autouse=True)
def no_session_left(postgres):
    """At the end, a fast restart ends the sessions this test process's MLflow clients keep in their pools:
    the server then stops at once at the end of the run (a smart shutdown waits for every session)."""
    yield
    _stop_server(postgres)
    _start_server(postgres)


@pytest.fixture()
def env(postgres_database: str, data: Path, tmp_path: Path) -> dict[str, str]:
    """The CLI's environment on a new PostgreSQL database as MLflow's store (and lock), artifacts under tmp_path."""
    client = MlflowClient(postgres_database)
    for spec in CLIENTS:  # a database store has no folder of its own for artifacts: the experiments say where
        name = experiment_name(spec.client_id)
        client.create_experiment(name, artifact_location=(tmp_path / "artifacts" / name).as_uri(),
                                 tags={CLIENT_ID_TAG: spec.client_id})
    environ = dict(os.environ, DATA_PREFIX=str(data), MLFLOW_TRACKING_URI=postgres_database)
    environ.pop("CATEGORIES_LOCK_URL", None)  # the lock is on the store's own database
    return environ


def _dsn(url: str) -> str:
    return urlparse(url)._replace(scheme="postgresql").geturl()


def _running_runs(url: str) -> int:
    """How many MLflow runs are RUNNING in the store (0 while the server does not answer)."""
    try:
        with closing(psycopg2.connect(_dsn(url), connect_timeout=2)) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM runs WHERE status = 'RUNNING'")
            return int(cursor.fetchone()[0])
    except psycopg2.Error:
        return 0


def _stop_server(server) -> None:
    """A fast shutdown (SIGINT): every session is ended at once, as a restart or a crash does."""
    name = server.log.stem
    process = server.supervisor.processes.get(name)
    os.kill(server.supervisor.pid(name), signal.SIGINT)
    if process is not None:
        process.wait(timeout=60)
    wait_until(lambda: not _answers(server.url), 60, "PostgreSQL stopped")


def _start_server(server) -> None:
    """Start the server again with the command line it last ran with (``postmaster.opts``, as pg_ctl restart does)."""
    name = server.log.stem
    process = _spawn_postmaster(server.log)
    # Recorded as the supervisor's own, so the fixture stops this one at the end of the run.
    server.supervisor.processes[name] = process
    server.supervisor.pid_file(name).write_text(str(process.pid), encoding="utf-8")
    wait_until(lambda: _answers(server.url), 60, "PostgreSQL started again")


def _spawn_postmaster(log: Path) -> subprocess.Popen:
    data = log.parent / "data"
    command = shlex.split((data / "postmaster.opts").read_text(encoding="utf-8"))
    owner = data.stat()
    as_owner = os.geteuid() == 0  # the server runs as its data folder's owner (initdb refuses root)
    with log.open("ab") as output:
        return subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            cwd=log.parent, user=owner.st_uid if as_owner else None, group=owner.st_gid if as_owner else None,
            extra_groups=[] if as_owner else None)


def _answers(url: str) -> bool:
    try:
        psycopg2.connect(_dsn(url), connect_timeout=2).close()
    except psycopg2.OperationalError:
        return False
    return True


def _when_a_run_is_open(process: subprocess.Popen, url: str) -> None:
    """Wait until the command has a run open in the store (it is writing to it), or fail if it ended first."""
    wait_until(lambda: _running_runs(url) or process.poll() is not None, 240, "a RUNNING training run")
    assert process.poll() is None, process.communicate()


def _trainer(client_id: str) -> list[str]:
    return [*train_args(client_id, params=json.dumps(PARAMS)), f"--model_family={FAMILY}"]


def _assert_trained(url: str, client_id: str) -> None:
    """The client's model has a version with its gate decision, a champion, and no run is left RUNNING."""
    client = MlflowClient(url)
    versions = client.search_model_versions(f"name = '{model_name(client_id)}'")
    assert versions and all(version.tags.get(PROMOTION_DECISION_TAG) for version in versions), versions
    assert CHAMPION in client.get_registered_model(model_name(client_id)).aliases
    experiment = client.get_experiment_by_name(experiment_name(client_id))
    runs = client.search_runs([experiment.experiment_id])
    assert not [run.info.run_id for run in runs if run.info.status == "RUNNING"]


def test_a_restart_during_a_training_is_retried_and_the_training_succeeds_quietly(postgres, postgres_database, env):
    process = start_cli(_trainer("small_b"), env)
    _when_a_run_is_open(process, postgres_database)
    _stop_server(postgres)
    time.sleep(DOWN_SECONDS)
    _start_server(postgres)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err
    assert err == "", err  # no traceback, no library's log line
    assert "registered small_b_model version 1" in out
    _assert_trained(postgres_database, "small_b")


def test_a_restart_during_train_all_is_retried_for_every_client(postgres, postgres_database, env, tmp_path):
    config = write_config(tmp_path / "clients.yaml", {
        spec.client_id: {"features": list(FEATURES), "params": PARAMS, "family": FAMILY} for spec in CLIENTS})
    process = start_cli(["train-all", f"--config={config}", f"--training_date={DATE}", "--workers=3"], env)
    _when_a_run_is_open(process, postgres_database)
    _stop_server(postgres)
    time.sleep(DOWN_SECONDS)
    _start_server(postgres)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, (out, err)
    assert "Traceback" not in err and "Error" not in err, err
    for spec in CLIENTS:
        _assert_trained(postgres_database, spec.client_id)


def test_an_outage_longer_than_the_deadline_fails_within_it_on_one_line_and_the_next_training_succeeds(
        postgres, postgres_database, env):
    budget = 10
    process = start_cli(_trainer("small_a"), dict(env, CATEGORIES_MLFLOW_TIMEOUT=str(budget)))
    _when_a_run_is_open(process, postgres_database)
    _stop_server(postgres)
    lost = time.monotonic()
    try:
        _, err = process.communicate(timeout=120)
        took = time.monotonic() - lost
    finally:
        _start_server(postgres)
    assert process.returncode == 1, err
    assert took < budget + 10, took
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"Error: client 'small_a': MLflow's database at {masked(postgres_database)} was lost "
                               f"and did not come back within {budget} s (CATEGORIES_MLFLOW_TIMEOUT): "), lines[0]
    assert urlparse(postgres_database).password not in err

    again = start_cli(_trainer("small_a"), env)
    out, err = again.communicate(timeout=240)
    assert again.returncode == 0, err
    assert "registered small_a_model version" in out
    _assert_trained(postgres_database, "small_a")  # the lost attempt's run was closed FAILED by this one
