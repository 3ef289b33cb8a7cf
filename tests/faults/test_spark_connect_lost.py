"""The shared Spark Connect service killed (SIGKILL to its JVM) while `predict-all` scores the fleet through it.

What an operator must get: the command ends within the configured deadline of the loss (pyspark's
own retries waited 30 minutes), one line per client naming that client and the service, no
traceback or library warning on stderr, every previous output and the registry as they were, the
prediction runs closed FAILED, no staging folder left; and with the service back, the next run
succeeds.
"""
import os
import re
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from categories_classification.paths import staging_root
from categories_classification.prediction.output import OWNER_SUFFIX
from categories_classification.records import experiment_name
from categories_classification.topk import TOP_K
from scripts.generate_example_data import ClientSpec
from scripts.spark_connect import NAME, start_service
from scripts.supervisor import free_ports
from tests.helpers import (DATE, client_entry, read_manifest, snapshot, staging_leftovers, start_cli, wait_until,
                           write_and_train, write_config, write_previous_output)

pytestmark = pytest.mark.slow
# Enough rows that the job is still writing when the service is killed (several seconds on 2 cores).
ROWS = 40_000
CLIENTS = (ClientSpec("lost_a", 301, n_train=600, n_predict=ROWS, n_categories=8),
           ClientSpec("lost_b", 302, n_train=600, n_predict=ROWS, n_categories=5))
IDS = [spec.client_id for spec in CLIENTS]
DEADLINE = 10  # CATEGORIES_SPARK_TIMEOUT for this test (the default, 60 s, is the unit tests')


def _running_runs(store_uri: str) -> list[str]:
    client = MlflowClient(store_uri)
    experiments = [client.get_experiment_by_name(experiment_name(client_id)).experiment_id for client_id in IDS]
    return [run.info.run_id for run in client.search_runs(experiments, "attributes.status = 'RUNNING'")]


@pytest.mark.usefixtures("tracking_store")
def test_a_killed_spark_connect_service_fails_each_client_on_one_line_within_the_deadline(tmp_path):
    connect_port = free_ports(1)[0]
    data = write_and_train(CLIENTS, tmp_path / "data", n_estimators=10)
    store_uri = os.environ["MLFLOW_TRACKING_URI"]
    for client_id in IDS:
        write_previous_output(data, client_id)
    config = write_config(tmp_path / "clients.yaml", {client_id: client_entry() for client_id in IDS})
    before = snapshot(data, store_uri, IDS)
    env = dict(os.environ, DATA_PREFIX=str(data), SPARK_REMOTE=f"sc://127.0.0.1:{connect_port}",
               CATEGORIES_SPARK_TIMEOUT=str(DEADLINE))
    command = ["predict-all", f"--config={config}", f"--inference_date={DATE}"]

    service = start_service(port=connect_port, master="local[2]", run_dir=tmp_path / "connect")
    try:
        process = start_cli(command, env)
        staging = Path(staging_root(str(data)))
        wait_until(lambda: process.poll() is not None or any(staging.rglob(f"*{OWNER_SUFFIX}")), 120,
                   "the job writing into _staging/")
        assert process.poll() is None, f"the job ended before it could be caught: {process.communicate()}"
        service.supervisor.kill(NAME)  # SIGKILL to its process group, waited for
        killed = time.monotonic()
        _, stderr = process.communicate(timeout=DEADLINE + 60)
        elapsed = time.monotonic() - killed
    finally:
        service.stop()

    assert process.returncode == 1, stderr
    assert elapsed < DEADLINE + 15, f"ended {elapsed:.0f} s after the loss (deadline {DEADLINE} s)"
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    url = f"sc://127.0.0.1:{connect_port}"
    assert len(errors) == len(IDS), stderr
    for line, client_id in zip(errors, IDS):  # one line per client, in the config's order, naming that client
        assert re.fullmatch(rf"Error: client {client_id!r}: Spark Connect at {re.escape(url)} was lost during scoring "
                            r"\((connection reset|connection refused|connection closed|unavailable)\); nothing "
                            rf"written, the output of {DATE} is left as it was", line), line
    assert "Traceback" not in stderr and "Warning" not in stderr and "WARN" not in stderr, stderr
    assert snapshot(data, store_uri, IDS) == before
    assert not _running_runs(store_uri)
    for client_id in IDS:
        assert not staging_leftovers(data, client_id)
    # Only the clients' (empty) work folders stay: no staged data, owner record, lock or Spark _temporary.
    assert not [str(path.relative_to(staging)) for path in staging.rglob("*")
                if not (path.is_dir() and path.parent == staging and path.name.startswith("client_id="))], \
        "left in _staging/ by the killed job"

    with start_service(port=connect_port, master="local[2]", run_dir=tmp_path / "connect_again"):
        process = start_cli(command, env)
        _, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr
    for client_id in IDS:
        assert read_manifest(data, client_id)["rows_written"] == TOP_K * ROWS
        assert not staging_leftovers(data, client_id)
