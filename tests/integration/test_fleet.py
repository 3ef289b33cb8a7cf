"""Many clients in one Spark job: the same rows as one client at a time, and a bad client fails alone.

Also the shared Spark Connect service: the predictor run as Airflow runs it (the CLI in a new
process) against a real service gives the same output, and a service that is down is one line.
"""
import gzip
import hashlib
import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest
from mlflow.tracking import MlflowClient

from categories_classification.errors import InputDataError, ModelNotFoundError
from categories_classification.prediction.predictor import predict_categories, predict_clients
from scripts.generate_example_data import ClientSpec
from scripts.supervisor import free_ports
from scripts.spark_connect import Service, start_service
from tests.helpers import (client_entry, non_parquet_in_dataset, output_folder, read_manifest, read_output, run_cli,
                           staging_leftovers, write_config, write_and_train)

pytestmark = pytest.mark.slow
ALONE, TOGETHER = "2026-11-21", "2026-11-22"
CLIENTS = (ClientSpec("fleet_a", 201, n_train=900, n_predict=700, n_categories=12),
           ClientSpec("fleet_b", 202, n_train=600, n_predict=300, n_categories=4),
           ClientSpec("fleet_c", 203, n_train=900, n_predict=500, n_categories=30))
IDS = [spec.client_id for spec in CLIENTS]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, module_tracking_store: Path) -> Path:  # pylint: disable=unused-argument
    """Three clients of different shapes, each trained once (version 1, champion)."""
    return write_and_train(CLIENTS, tmp_path_factory.mktemp("fleet"), n_estimators=10, date=ALONE)


@pytest.fixture(scope="module")
def connect_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A real Spark Connect service on a free loopback port (local[2] behind it); stopped at teardown."""
    with start_service(port=free_ports(1)[0], master="local[2]", run_dir=tmp_path_factory.mktemp("connect")) as service:
        yield service


def _state(prefix: Path) -> dict[str, str]:
    """Every output file's digest: what a failed client must leave exactly as it was."""
    root = prefix / "products_categories"
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_one_job_for_the_fleet_writes_the_same_rows_as_one_client_at_a_time(fleet, spark):
    alone = {client_id: predict_categories(client_id, ALONE, data_prefix=str(fleet), spark=spark) for client_id in IDS}
    together = predict_clients(IDS, TOGETHER, data_prefix=str(fleet), spark=spark)
    for client_id in IDS:
        result = together[client_id]
        assert not isinstance(result, Exception), result
        assert (result.rows_written, result.model_version) == (alone[client_id].rows_written, 1)
        assert read_output(fleet, client_id, TOGETHER).equals(read_output(fleet, client_id, ALONE))
        manifest = read_manifest(fleet, client_id, TOGETHER)
        assert manifest["rows_written"] == result.rows_written and manifest["prediction_run_id"] == result.prediction_run_id
        run = MlflowClient().get_run(result.prediction_run_id)
        assert run.info.status == "FINISHED" and run.data.metrics["rows_out"] == result.rows_written
        # Nothing but the date folders, and no staging left.
        assert sorted(path.name for path in output_folder(fleet, client_id).parent.iterdir()) == [
            f"date={ALONE}", f"date={TOGETHER}"]
        assert not staging_leftovers(fleet, client_id)
    assert not non_parquet_in_dataset(fleet)


def _break(prefix: Path, client_id: str, how: str) -> None:
    path = prefix / "prediction" / f"client_id={client_id}" / "data_predict.csv.gz"
    if how == "not a number":
        lines = gzip.decompress(path.read_bytes()).decode().splitlines()
        lines[2] = lines[2].rsplit(",", 1)[0] + ",oops"
        path.write_bytes(gzip.compress("\n".join(lines).encode()))
    else:  # a gzip file cut short: only the job can find out
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def test_a_bad_client_fails_alone_and_loses_nothing(fleet, spark, tmp_path):
    prefix = tmp_path / "data"
    shutil.copytree(fleet, prefix)
    predict_clients(IDS, TOGETHER, data_prefix=str(prefix), spark=spark)
    before = _state(prefix)
    _break(prefix, "fleet_a", "not a number")
    _break(prefix, "fleet_c", "truncated")
    outcomes = predict_clients([*IDS, "fleet_untrained"], TOGETHER, data_prefix=str(prefix), spark=spark)

    assert isinstance(outcomes["fleet_a"], InputDataError)
    assert "a feature value is not a number" in str(outcomes["fleet_a"]) and "'" in str(outcomes["fleet_a"])
    assert isinstance(outcomes["fleet_c"], InputDataError) and "not a valid gzip file" in str(outcomes["fleet_c"])
    assert isinstance(outcomes["fleet_untrained"], ModelNotFoundError)
    for error in (outcomes["fleet_a"], outcomes["fleet_c"], outcomes["fleet_untrained"]):
        assert "\n" not in str(error)
    assert outcomes["fleet_b"].rows_written == 4 * 300  # 4 categories: 4 rows per product
    after = _state(prefix)
    for client_id in ("fleet_a", "fleet_c"):  # their earlier output, byte for byte
        assert {k: v for k, v in after.items() if client_id in k} == {k: v for k, v in before.items() if client_id in k}
    assert {k for k, v in after.items() if "fleet_b" in k and before.get(k) != v}  # fleet_b was rewritten


def test_the_predictor_command_uses_the_shared_spark_service(fleet, spark, connect_service, tmp_path):
    env = dict(os.environ, DATA_PREFIX=str(fleet), SPARK_REMOTE=connect_service.url,
               SPARK_JVM_LOG=str(tmp_path / "jvm.log"))
    result = run_cli(["predictor", "--client_id=fleet_a", "--inference_date=2026-11-23"], env)
    assert result.returncode == 0, result.stderr
    predict_categories("fleet_a", "2026-11-24", data_prefix=str(fleet), spark=spark)  # in-process, classic
    assert read_output(fleet, "fleet_a", "2026-11-23").equals(read_output(fleet, "fleet_a", "2026-11-24"))
    # No JVM of its own: the command's process tree never started one (the JVM log stays empty).
    assert not (tmp_path / "jvm.log").exists()
    config = write_config(tmp_path / "clients.yaml", {client_id: client_entry() for client_id in IDS})
    fleet_run = run_cli(["predict-all", "--inference_date=2026-11-25"], dict(env, CONFIG_FILE=str(config)))
    assert fleet_run.returncode == 0, fleet_run.stderr
    for client_id in IDS:
        assert read_output(fleet, client_id, "2026-11-25").equals(read_output(fleet, client_id, "2026-11-24")
                                                                 if client_id == "fleet_a" else
                                                                 read_output(fleet, client_id, ALONE))
        assert not staging_leftovers(fleet, client_id)
    assert not non_parquet_in_dataset(fleet)  # the service's writes, swapped in by this process


def test_a_spark_service_that_is_down_is_one_line(fleet):
    port = free_ports(1)[0]
    env = dict(os.environ, DATA_PREFIX=str(fleet), SPARK_REMOTE=f"sc://127.0.0.1:{port}")
    result = run_cli(["predictor", "--client_id=fleet_b", "--inference_date=2026-11-26"], env, timeout=120)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"Spark Connect service at 127.0.0.1:{port} (SPARK_REMOTE) is not reachable" in result.stderr
    assert "start it" in result.stderr
    assert not output_folder(fleet, "fleet_b", "2026-11-26").exists()
