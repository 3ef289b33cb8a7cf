"""The MLflow server killed (SIGKILL) while `predict-all` scores a fleet: each client fails on its own line.

Before, every error line named the first client, that client's output was swapped in while it was
reported failed (its manifest naming a run left RUNNING), and the other clients kept their staging
folders. Now: one line per client naming that client and the store, within a bounded time; no
output goes in without its run closed FINISHED, so every client keeps its previous output; no
staging folder left; and with the server back, the next run closes the runs left RUNNING and
succeeds.
"""
import os
import re
import signal
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from categories_classification.paths import staging_root
from categories_classification.prediction.output import OWNER_SUFFIX
from categories_classification.records import experiment_name
from scripts.generate_example_data import ClientSpec
from tests.helpers import (DATE, client_entry, read_manifest, snapshot, staging_leftovers, start_cli, wait_until,
                           write_and_train, write_config, write_previous_output)

pytestmark = pytest.mark.slow
CLIENTS = tuple(ClientSpec(f"mlost_{index}", 400 + index, n_train=300, n_predict=8_000, n_categories=4)
                for index in range(4))
IDS = [spec.client_id for spec in CLIENTS]
# Seconds from the end of the Spark job (its staging folders in place), the first MLflow call after the loss,
# to the end of the command: one MLflow request's budget (30 s by default), then the others fail at once.
BOUND = 45


def _runs(store_uri: str, status: str) -> list[str]:
    client = MlflowClient(store_uri)
    experiments = [client.get_experiment_by_name(experiment_name(client_id)).experiment_id for client_id in IDS]
    return sorted(run.info.run_id for run in client.search_runs(experiments, f"attributes.status = '{status}'"))


def test_a_killed_mlflow_server_fails_each_client_on_its_own_line_and_nothing_goes_in(tmp_path, mlflow_server_control):
    server = mlflow_server_control
    data = write_and_train(CLIENTS, tmp_path / "data", n_estimators=3)
    for client_id in IDS:
        write_previous_output(data, client_id)
    config = write_config(tmp_path / "clients.yaml", {client_id: client_entry() for client_id in IDS})
    before = snapshot(data, server.url, IDS)
    env = {key: value for key, value in os.environ.items() if key != "SPARK_REMOTE"}
    env["DATA_PREFIX"] = str(data)
    command = ["predict-all", f"--config={config}", f"--inference_date={DATE}"]

    process = start_cli(command, env)
    staging = Path(staging_root(str(data)))
    wait_until(lambda: process.poll() is not None or any(staging.rglob(f"*{OWNER_SUFFIX}")), 120,
               "the job writing into _staging/")
    assert process.poll() is None, f"the job ended before it could be caught: {process.communicate()}"
    server.stop(signal.SIGKILL)
    # The job carries on without MLflow (however long it takes on a busy machine); the bound starts at its end.
    wait_until(lambda: process.poll() is not None or staging_leftovers(data, IDS[0]), 300, "the job's end")
    job_done = time.monotonic()
    _, stderr = process.communicate(timeout=BOUND + 60)
    elapsed = time.monotonic() - job_done

    assert process.returncode == 1, stderr
    assert elapsed < BOUND, f"ended {elapsed:.0f} s after the job, the first MLflow call since the loss"
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == len(IDS), stderr
    for line, client_id in zip(errors, IDS):  # one line per client, in the config's order, naming that client
        assert re.fullmatch(rf"Error: client {client_id!r}: MLflow at {re.escape(server.url)} was lost while "
                            r"recording the prediction's lineage \((connection refused|connection reset|"
                            rf"connection closed)\); nothing written, the output of {DATE} is left as it was",
                            line), line
    assert "Traceback" not in stderr and "Warning" not in stderr and "WARN" not in stderr, stderr
    for client_id in IDS:
        assert not staging_leftovers(data, client_id)

    server.start()  # the same store, the same port
    assert snapshot(data, server.url, IDS) == before  # every previous output, manifest and version as it was
    left_running = _runs(server.url, "RUNNING")
    assert len(left_running) == len(IDS)  # the killed server could not close them: the next run does

    process = start_cli(command, env)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr
    assert not _runs(server.url, "RUNNING")
    assert set(left_running) <= set(_runs(server.url, "FAILED"))
    finished = _runs(server.url, "FINISHED")
    for client_id in IDS:
        assert read_manifest(data, client_id)["prediction_run_id"] in finished
        assert not staging_leftovers(data, client_id)
