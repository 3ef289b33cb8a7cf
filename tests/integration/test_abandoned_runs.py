"""Runs left RUNNING by a killed process are closed as FAILED by the client's next run; others are not."""
import os
import socket
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from categories_classification.records import (
    FAILURE_REASON_TAG,
    HOST_TAG,
    PID_TAG,
    PREDICTION,
    STAGE_TAG,
    TRAINING,
)
from categories_classification.tracking.runs import close_abandoned_runs, ensure_experiment
from categories_classification.tracking.store import configure_tracking
from categories_classification.training.trainer import train_model
from tests.helpers import DATE, FEATURES, kill_mid_run, start_cli, train_args

pytestmark = pytest.mark.slow


def _running_trainings(client: MlflowClient, experiment_id: str) -> list:
    return client.search_runs([experiment_id], "tags.stage = 'training' AND attributes.status = 'RUNNING'")


@pytest.mark.usefixtures("tracking_store")
def test_a_killed_training_is_closed_as_failed_by_the_next_training(small_data):
    configure_tracking()
    experiment_id = ensure_experiment("small_a")
    client = MlflowClient()
    victim = start_cli(train_args("small_a", params='{"n_estimators": 200}'), dict(os.environ, DATA_PREFIX=str(small_data)))
    kill_mid_run(victim, lambda: _running_trainings(client, experiment_id), "the training's RUNNING run")
    (killed,) = _running_trainings(client, experiment_id)
    host = socket.gethostname()
    assert killed.data.tags[HOST_TAG] == host and killed.data.tags[PID_TAG] == str(victim.pid)

    # A training of this client still running here (this process), and another host's runs:
    # one recent (its process may well be alive), one two days old.
    here = {HOST_TAG: host, PID_TAG: str(os.getpid()), STAGE_TAG: TRAINING}
    live = client.create_run(experiment_id, tags=here).info.run_id
    elsewhere = {HOST_TAG: "another-host", PID_TAG: "1", STAGE_TAG: TRAINING}
    recent = client.create_run(experiment_id, tags=elsewhere).info.run_id
    old = client.create_run(experiment_id, tags=elsewhere, start_time=int((time.time() - 2 * 86400) * 1000)).info.run_id

    result = train_model("small_a", FEATURES, {"n_estimators": 10}, DATE, data_prefix=str(small_data))

    closed = client.get_run(killed.info.run_id)
    assert closed.info.status == "FAILED"
    assert closed.data.tags[FAILURE_REASON_TAG].startswith(f"process {victim.pid} on {host} is gone")
    assert client.get_run(live).info.status == "RUNNING"
    assert client.get_run(recent).info.status == "RUNNING"
    assert client.get_run(old).info.status == "FAILED"
    assert "another-host" in client.get_run(old).data.tags[FAILURE_REASON_TAG]
    new = client.get_run(result.run_id)
    assert new.info.status == "FINISHED" and new.data.tags[PID_TAG] == str(os.getpid())
    for run_id in (live, recent):
        client.set_terminated(run_id)


@pytest.mark.usefixtures("tracking_store")
def test_a_fleet_prediction_closes_every_clients_abandoned_runs_in_one_pass():
    configure_tracking()
    client = MlflowClient()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()  # a pid that has exited
    dead = {HOST_TAG: socket.gethostname(), PID_TAG: gone, STAGE_TAG: PREDICTION}
    runs = {client_id: client.create_run(ensure_experiment(client_id), tags={**dead, "client_id": client_id})
            .info.run_id for client_id in ("fleet_a", "fleet_b", "fleet_c")}

    closed = close_abandoned_runs("fleet_a", "fleet_b", "never_trained")

    assert sorted(closed) == sorted([runs["fleet_a"], runs["fleet_b"]])
    assert client.get_run(runs["fleet_c"]).info.status == "RUNNING"  # not one of the clients asked for
    assert {client.get_run(runs[c]).info.status for c in ("fleet_a", "fleet_b")} == {"FAILED"}
    client.set_terminated(runs["fleet_c"])
