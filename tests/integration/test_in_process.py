"""A small fleet on this machine is scored without Spark's JVM, and writes what the Spark job writes.

The Spark job (a real local session) is the reference: the same rows to the last bit, the same
counts, drift and lineage; a file pyarrow cannot read plainly goes to that job, which tells what is
wrong (or scores it), while the fleet's clean clients stay in this process.
"""
import gzip
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from categories_classification.errors import InputDataError
from categories_classification.prediction.engine import IN_PROCESS
from categories_classification.prediction.predictor import predict_clients
from scripts.generate_example_data import ClientSpec
from tests.helpers import (client_entry, non_parquet_in_dataset, output_folder, prediction_runs, read_manifest, read_output, run_cli,
                           staging_leftovers, write_and_train, write_config)

pytestmark = pytest.mark.slow
BY_SPARK, HERE, MIXED = "2026-11-21", "2026-11-22", "2026-11-23"
CLIENTS = (ClientSpec("here_a", 301, n_train=900, n_predict=700, n_categories=12),
           ClientSpec("here_b", 302, n_train=600, n_predict=300, n_categories=4),
           ClientSpec("here_c", 303, n_train=900, n_predict=500, n_categories=30))
IDS = [spec.client_id for spec in CLIENTS]
SAME = ("model_version", "training_run_id", "features", "rows_written", "rows_skipped", "drift", "input_path")


@pytest.fixture(scope="module", name="fleet")
def _fleet(tmp_path_factory: pytest.TempPathFactory, module_tracking_store: Path) -> Path:  # pylint: disable=unused-argument
    """Three clients of different shapes, trained once; here_b's input has numbers as people write them."""
    root = write_and_train(CLIENTS, tmp_path_factory.mktemp("in_process"), n_estimators=10, date=BY_SPARK)
    _edit_lines(root, "here_b", _spaced_and_missing)
    return root


def _input(prefix: Path, client_id: str) -> Path:
    return prefix / "prediction" / f"client_id={client_id}" / "data_predict.csv.gz"


def _edit_lines(prefix: Path, client_id: str, edit) -> None:
    path = _input(prefix, client_id)
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    path.write_bytes(gzip.compress(("\n".join(edit(lines)) + "\n").encode()))


def _spaced_and_missing(lines: list[str]) -> list[str]:
    """Spaces around a number, a leading '+', a missing value: Spark and pyarrow must read them alike."""
    for index in (1, 2, 3):
        product, first, *rest = lines[index].split(",")
        lines[index] = ",".join([product, {1: f" {first} ", 2: "+" + first.lstrip("-"), 3: ""}[index], *rest])
    return lines


def _schema(prefix: Path, client_id: str, date: str) -> list[tuple[str, str]]:
    (first, *_) = sorted(output_folder(prefix, client_id, date).glob("*.parquet"))
    return [(field.name, str(field.type)) for field in pq.read_schema(first)]


def test_a_small_fleet_is_scored_without_a_jvm_and_writes_what_spark_writes(fleet, spark, tmp_path):
    by_spark = predict_clients(IDS, BY_SPARK, data_prefix=str(fleet), spark=spark)
    config = write_config(tmp_path / "clients.yaml", {client_id: client_entry() for client_id in IDS})
    env = dict(os.environ, DATA_PREFIX=str(fleet), CONFIG_FILE=str(config), SPARK_MASTER="local[2]",
               SPARK_JVM_LOG=str(tmp_path / "jvm.log"))
    env.pop("SPARK_REMOTE", None)
    run_cli(["predict-all", f"--inference_date={HERE}"], env, check=True)

    assert not (tmp_path / "jvm.log").exists()  # no JVM was started
    assert by_spark["here_b"].rows_skipped == 1
    for client_id in IDS:
        assert read_output(fleet, client_id, HERE).equals(read_output(fleet, client_id, BY_SPARK))
        assert _schema(fleet, client_id, HERE) == _schema(fleet, client_id, BY_SPARK)
        here, spark_side = read_manifest(fleet, client_id, HERE), read_manifest(fleet, client_id, BY_SPARK)
        assert {key: here[key] for key in SAME} == {key: spark_side[key] for key in SAME}
        assert (here["spark"], spark_side["spark"]) == (IN_PROCESS, spark.sparkContext.master)
        run = MlflowClient().get_run(here["prediction_run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["spark"] == IN_PROCESS
        assert run.data.metrics["rows_out"] == here["rows_written"]
        assert not staging_leftovers(fleet, client_id)
    assert not non_parquet_in_dataset(fleet)


def test_a_file_pyarrow_cannot_read_plainly_goes_to_spark_and_the_others_stay_here(fleet, spark, tmp_path,
                                                                                    monkeypatch):
    prefix = tmp_path / "data"
    shutil.copytree(fleet, prefix)
    predict_clients(IDS, BY_SPARK, data_prefix=str(prefix), spark=spark)
    previous = read_output(prefix, "here_a", BY_SPARK)
    # here_a: a value that is not a number (Spark names the fault); here_c: quoted ids, which Spark reads.
    _edit_lines(prefix, "here_a", lambda lines: [*lines[:2], lines[2].rsplit(",", 1)[0] + ",oops", *lines[3:]])
    _edit_lines(prefix, "here_c", lambda lines: [lines[0], *(f'"{line.split(",", 1)[0]}",{line.split(",", 1)[1]}'
                                                            for line in lines[1:])])
    shutil.copytree(output_folder(prefix, "here_a", BY_SPARK), output_folder(prefix, "here_a", MIXED))
    monkeypatch.setenv("SPARK_MASTER", "local[2]")
    monkeypatch.delenv("SPARK_REMOTE", raising=False)

    outcomes = predict_clients(IDS, MIXED, data_prefix=str(prefix))  # no session given: this process first

    assert isinstance(outcomes["here_a"], InputDataError) and "\n" not in str(outcomes["here_a"])
    assert "a feature value is not a number" in str(outcomes["here_a"]) and "here_a" in str(outcomes["here_a"])
    assert read_output(prefix, "here_a", MIXED).equals(previous)  # its earlier output is left as it was
    assert read_output(prefix, "here_c", MIXED).equals(read_output(prefix, "here_c", BY_SPARK))
    assert read_output(prefix, "here_b", MIXED).equals(read_output(prefix, "here_b", BY_SPARK))
    assert read_manifest(prefix, "here_b", MIXED)["spark"] == IN_PROCESS
    manifest_c = read_manifest(prefix, "here_c", MIXED)
    assert manifest_c["spark"] not in ("", IN_PROCESS)  # scored by Spark after all, and its lineage says so
    assert MlflowClient().get_run(manifest_c["prediction_run_id"]).data.tags["spark"] == manifest_c["spark"]
    failed = prediction_runs("here_a", MIXED)  # its FAILED run names Spark, where its fault was found, too
    assert [(run.info.status, run.data.tags["spark"]) for run in failed] == [("FAILED", manifest_c["spark"])]
    for client_id in IDS:
        assert not staging_leftovers(prefix, client_id)
    assert not non_parquet_in_dataset(prefix)
