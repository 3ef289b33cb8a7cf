"""The whole output tree, read by the tools users have (DuckDB, Polars, pyarrow, pandas, Spark), before, during
and after real predictions: every read succeeds and shows complete outputs only."""
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import duckdb
import pandas as pd
import polars as pl
import pyarrow.dataset as ds
import pytest

from categories_classification.prediction.predictor import predict_categories, predict_clients
from categories_classification.training.trainer import train_model
from scripts.generate_example_data import write_client
from tests.helpers import DATE, FEATURES, SMALL_CLIENTS, non_parquet_in_dataset

pytestmark = pytest.mark.slow
ALONE, TOGETHER = "2026-11-24", "2026-11-25"  # written while the readers poll: one client, then a fleet job
WRITE_SECONDS = 600

Groups = Counter  # rows per (client_id, date)


def _counted(frame: pd.DataFrame) -> Groups:
    return Counter(zip(frame["client_id"].astype(str), frame["date"].astype(str)))


def _duckdb(root: Path, _spark) -> Groups:
    with duckdb.connect() as connection:
        return _counted(connection.sql(f"SELECT client_id, date FROM read_parquet('{root}/**/*.parquet', "
                                       "hive_partitioning = true)").df())


def _polars(root: Path, _spark) -> Groups:
    return _counted(pl.scan_parquet(root, hive_partitioning=True).select("client_id", "date").collect().to_pandas())


def _pyarrow(root: Path, _spark) -> Groups:
    return _counted(ds.dataset(root, partitioning="hive").to_table(columns=["client_id", "date"]).to_pandas())


def _pandas(root: Path, _spark) -> Groups:
    return _counted(pd.read_parquet(root, columns=["client_id", "date"]))


def _spark_read(root: Path, spark) -> Groups:
    return Counter({(row["client_id"], str(row["date"])): row["count"]
                    for row in spark.read.parquet(str(root)).groupBy("client_id", "date").count().collect()})


READERS: dict[str, Callable[[Path, object], Groups]] = {
    "duckdb": _duckdb, "polars": _polars, "pyarrow": _pyarrow, "pandas": _pandas, "spark": _spark_read}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, module_tracking_store):  # pylint: disable=unused-argument
    """small_a and small_b in a data prefix of their own (other tests write outputs into the shared one),
    trained once (few trees: the readers are the point here)."""
    prefix = tmp_path_factory.mktemp("readers")
    for spec in SMALL_CLIENTS:
        write_client(spec, prefix)
    for client_id in ("small_a", "small_b"):
        train_model(client_id, FEATURES, {"n_estimators": 8}, DATE, data_prefix=str(prefix))
    return prefix


def _read_all(root: Path, spark, complete: dict) -> None:
    """Read the tree with every reader; each must succeed and show each (client, date) whole or not at all."""
    for name, reader in READERS.items():
        try:
            groups = reader(root, spark)
        except Exception as exc:  # pylint: disable=broad-except  # reported with the reader's name
            pytest.fail(f"{name} could not read {root}: {exc}")
        partial = {key: rows for key, rows in groups.items() if rows != complete.get(key)}
        assert not partial, f"{name} read incomplete outputs {partial} (complete: {complete})"


def test_every_reader_reads_the_tree_before_during_and_after_predictions(trained, spark):
    root = trained / "products_categories"
    first = predict_categories("small_a", DATE, data_prefix=str(trained), spark=spark)
    complete = {("small_a", DATE): first.rows_written}
    # Row counts of the outputs being written (the same inputs as the first run's, so known in advance).
    complete[("small_a", ALONE)] = complete[("small_a", TOGETHER)] = first.rows_written
    complete[("small_b", TOGETHER)] = 250 * 3
    _read_all(root, spark, complete)

    failures: list[BaseException] = []

    def write() -> None:
        try:
            predict_categories("small_a", ALONE, data_prefix=str(trained), spark=spark)
            outcomes = predict_clients(["small_a", "small_b"], TOGETHER, data_prefix=str(trained), spark=spark)
            failures.extend(outcome for outcome in outcomes.values() if isinstance(outcome, Exception))
        except BaseException as exc:  # pylint: disable=broad-except  # re-raised by the test's thread
            failures.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    deadline, rounds, while_staged = time.monotonic() + WRITE_SECONDS, 0, 0
    while writer.is_alive() and time.monotonic() < deadline:
        staged = any(path.is_file() for path in (trained / "_staging").rglob("*"))
        _read_all(root, spark, complete)
        rounds, while_staged = rounds + 1, while_staged + staged
    writer.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not writer.is_alive(), f"the predictions did not finish within {WRITE_SECONDS} s"
    assert not failures, failures
    assert while_staged, f"no read round ran while a prediction was being written ({rounds} rounds)"

    for name, reader in READERS.items():
        assert reader(root, spark) == complete, name
    assert not non_parquet_in_dataset(trained)
