"""A small fleet scored in this process: when it is, what it leaves to Spark, and the same rows and counts as
Spark's workers (their own code, fed the batches the driver builds). No Spark, no MLflow."""
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.ensemble import RandomForestClassifier

from categories_classification.errors import ConfigError
from categories_classification.prediction import engine, in_process, output
from categories_classification.prediction.checks import DriftCheck
from categories_classification.prediction.files import LocalFiles
from categories_classification.prediction.plan import ClientPlan
from categories_classification.prediction.scoring import (CLIENT, FEATURES, HASH, MALFORMED, STATS, ClientModel, Scorer,
                                                         read_stats)
from categories_classification.serialization import dump_model
from categories_classification.topk import ARROW_SCHEMA
from categories_classification.tracking.registry import ModelRef

DATE = "2026-11-23"
COLUMNS = ("product_id", "f0", "note", "f1")  # a column the model does not use, between its features


def _write(prefix: Path, client_id: str, lines: list[str]) -> None:
    path = prefix / "prediction" / f"client_id={client_id}" / "data_predict.csv.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(("\n".join([",".join(COLUMNS), *lines]) + "\n").encode()))


def _rows(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"p{index},{rng.random():.6f},n{index},{rng.random():.6f}" for index in range(count)]


@pytest.fixture(name="plan")
def _plan(tmp_path):
    """A client with a forest of 7 categories, its model file and a drift reference (3 and 2 bins)."""
    rng = np.random.default_rng(1)
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(
        pd.DataFrame(rng.random((300, 2)), columns=["f0", "f1"]), [f"c{i}" for i in rng.integers(0, 7, 300)])
    model_file = tmp_path / "c1_model-v1.skops"
    model_file.write_bytes(dump_model(model))
    prefix = tmp_path / "data"
    check = DriftCheck(0.2, reference={"features": {"f0": {"edges": [0.3, 0.6]}, "f1": {"edges": [0.5]}}})

    def make(lines: list[str], client_id: str = "c1") -> ClientPlan:
        _write(prefix, client_id, lines)
        return ClientPlan(client_id, DATE, str(prefix / "prediction" / f"client_id={client_id}" / "data_predict.csv.gz"),
                          output.placement(client_id, DATE, str(prefix)), ModelRef(client_id, f"{client_id}_model", 1, "r1"),
                          "champion", model_file, ("f0", "f1"), COLUMNS, check)
    return make


def test_a_small_local_fleet_is_scored_here_and_anything_else_by_spark(tmp_path):
    _write(tmp_path, "c1", _rows(10))
    local = str(tmp_path)
    assert engine.in_this_process(["c1", "absent"], local, {})
    assert engine.in_this_process(["c1"], local, {"SPARK_MASTER": "local[2]", "CATEGORIES_SCORING": "auto"})
    assert not engine.in_this_process(["c1"], local, {"CATEGORIES_SCORING": "spark"})
    assert not engine.in_this_process(["c1"], local, {"SPARK_REMOTE": "sc://127.0.0.1:15002"})
    assert not engine.in_this_process(["c1"], local, {"SPARK_MASTER": "spark://127.0.0.1:7077"})
    assert not engine.in_this_process(["c1"], local, {"PYSPARK_GATEWAY_PORT": "40000"})  # under spark-submit
    assert not engine.in_this_process(["c1"], "s3a://bucket/data", {})


def test_a_fleet_over_the_size_limit_goes_to_spark(tmp_path, monkeypatch):
    _write(tmp_path, "c1", _rows(10))
    _write(tmp_path, "c2", _rows(10))
    size = (tmp_path / "prediction" / "client_id=c1" / "data_predict.csv.gz").stat().st_size
    monkeypatch.setattr(engine, "MAX_BYTES", 2 * size - 1)
    assert engine.in_this_process(["c1"], str(tmp_path), {})
    assert not engine.in_this_process(["c1", "c2"], str(tmp_path), {})


def test_a_fleet_scored_here_loads_the_model_loader_before_mlflow_and_spark(tmp_path):
    """skops searches every loaded module when it loads: first, it costs about 1 s less (the CLI's order)."""
    _write(tmp_path, "c1", _rows(10))
    code = ("import sys; from categories_classification.prediction.engine import prepare; "
            f"here = prepare(['c1'], {str(tmp_path)!r}); "
            "print(here, *(name in sys.modules for name in ('skops.io', 'mlflow', 'pyspark')))")
    env = {key: value for key, value in os.environ.items() if key not in ("SPARK_REMOTE", "CATEGORIES_SCORING")}
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                           cwd=Path(__file__).resolve().parents[3], env={**env, "SPARK_MASTER": "local[2]"}).stdout.split()
    assert found == ["True", "True", "False", "False"]


def test_a_fleet_for_spark_starts_its_session_first(tmp_path, monkeypatch):
    from categories_classification.prediction import spark  # pylint: disable=import-outside-toplevel

    started = []
    monkeypatch.setattr(spark, "start_session", lambda: started.append(True))
    monkeypatch.setenv("CATEGORIES_SCORING", "spark")
    assert engine.prepare(["c1"], str(tmp_path)) is False
    assert started == [True]


def test_an_unknown_engine_is_one_line_naming_expected_and_found(tmp_path):
    with pytest.raises(ConfigError, match=r"CATEGORIES_SCORING='java': expected one of auto, spark"):
        engine.in_this_process(["c1"], str(tmp_path), {"CATEGORIES_SCORING": "java"})


@pytest.mark.parametrize("line, why", [
    ("p1,oops,n,0.5", "a value that is not a number"),
    ("p1,0.5,n", "a row with a field missing"),
    ("p1,0.5,n,0.5,extra", "a row with a field too many"),
    ('p1,0.5,"a, b",0.5', "a quoted value in a column the model does not use"),
    ('"p,1",0.5,n,0.5', "a quoted value"),
    ("p\\1,0.5,n,0.5", "a backslash"),
    ("p1,NaN,n,0.5", "a value Spark reads as NaN"),
    ("p1,Inf,n,0.5", "an infinite value"),
    (",0.5,n,0.5", "an empty product_id"),
    ("p0,0.5,n,0.5", "a repeated product_id"),
])
def test_an_input_that_is_not_plainly_clean_is_left_to_spark(plan, line, why):
    assert in_process.clean_input(plan(["p0,0.1,n,0.2", line])) is None, why


def test_no_rows_is_left_to_spark(plan):
    assert in_process.clean_input(plan([])) is None


def test_a_clean_input_keeps_empty_feature_values_as_missing(plan):
    # Numbers as Java's parseDouble reads them on Spark (spaces around them included).
    table = in_process.clean_input(plan(["p0,0.1,n,0.2", "p1,,,0.4", "p2,1e-3,x y,.5", "p3, +2 ,n,7."]))
    assert table.column_names == ["product_id", "f0", "f1"]
    assert table.column("f0").to_pylist() == [0.1, None, 0.001, 2.0]
    assert table.column("f1").to_pylist() == [0.2, 0.4, 0.5, 7.0]


def _as_spark_workers_score(plan: ClientPlan, table: pa.Table) -> tuple[pa.Table, dict]:
    """The same rows through the Scorer, in the batches the Spark driver builds (client, id, features, hash)."""
    ids = table.column("product_id").combine_chunks()
    features = pa.array([list(row) for row in zip(*(table.column(name).to_pylist() for name in plan.features))],
                        pa.list_(pa.float64()))
    batch = pa.RecordBatch.from_pydict({
        CLIENT: pa.array([plan.client_id] * len(ids)), "product_id": ids, FEATURES: features,
        MALFORMED: pa.nulls(len(ids), pa.string()), HASH: pa.array([hash(value) for value in ids.to_pylist()],
                                                                   pa.int64())})
    spec = ClientModel(str(plan.model_file), plan.features, plan.model.drift_edges)
    scorer = Scorer({plan.client_id: spec}, k=5, hash_ids=True, load=lambda name: Path(name).read_bytes())
    out = pa.Table.from_batches(list(scorer(iter([batch]))))
    (stats,) = read_stats(out.filter(out[STATS].is_valid())[STATS].to_pylist())[plan.client_id]
    return out.filter(out[STATS].is_null()).select(ARROW_SCHEMA.names), stats


def test_the_rows_and_counts_are_those_of_sparks_workers(plan):
    lines = _rows(2500, seed=3)
    lines[7] = "p7,,n7,0.5"  # skipped: a missing value, as on Spark
    client = plan(lines)
    (scored,) = in_process.score(LocalFiles(), [client])
    files = sorted(Path(scored.staging).iterdir())
    assert [path.suffix for path in files] == [".parquet"]
    written = pq.read_table(files[0])
    assert written.schema.equals(ARROW_SCHEMA)
    expected, expected_stats = _as_spark_workers_score(client, in_process.clean_input(client))
    assert written.equals(expected)  # to the last bit
    (stats,) = scored.stats
    assert stats == {**expected_stats, "repeated": 0}
    assert (stats["rows"], stats["skipped"], stats["written"]) == (2500, 1, 2499 * 5)
    assert sum(stats["drift_counts"][0]) == 2499 and len(stats["drift_counts"][1]) == 2
    # Beside the staging folder, this process's owner record: what a later run reads if this one is killed.
    owner = json.loads(Path(client.place.owner(scored.token)).read_text(encoding="utf-8"))
    assert owner["pid"] > 0


def test_clients_are_scored_side_by_side_and_an_unclean_one_is_left_out(plan):
    clean, other, unclean = plan(_rows(50)), plan(_rows(80, seed=1), "c2"), plan(["p0,x,n,0.1"], "c3")
    results = in_process.score(LocalFiles(), [clean, other, unclean])
    assert [result is None for result in results] == [False, False, True]
    assert [result.stats[0]["client_id"] for result in results[:2]] == ["c1", "c2"]
    assert results[0].staging != results[1].staging
    assert not (Path(unclean.place.work).exists() and list(Path(unclean.place.work).iterdir()))


def test_a_model_file_that_does_not_load_is_left_to_spark(plan):
    client = plan(_rows(5))
    client.model_file.write_bytes(b"not a model")
    assert in_process.score(LocalFiles(), [client]) == [None]


def test_a_staging_folder_it_cannot_write_is_left_to_spark(plan):
    # Spark's job then fails that client on its own line, as it always did (tests/integration/test_infrastructure_faults.py).
    client = plan(_rows(5))
    work = Path(client.place.work)
    work.parent.mkdir(parents=True)
    work.write_text("a file where the client's staging folder goes", encoding="utf-8")
    assert in_process.score(LocalFiles(), [client]) == [None]


def test_a_model_that_cannot_score_the_rows_is_left_to_spark_with_nothing_staged(plan):
    client = plan(_rows(5))
    narrower = RandomForestClassifier(n_estimators=2, random_state=0).fit(pd.DataFrame({"f0": [0.0, 1.0]}), ["a", "b"])
    client.model_file.write_bytes(dump_model(narrower))  # fitted on one feature: two given
    assert in_process.score(LocalFiles(), [client]) == [None]
    assert not [path for path in Path(client.place.work).iterdir() if not path.name.endswith(".owner")]
