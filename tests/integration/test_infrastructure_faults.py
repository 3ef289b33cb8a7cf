"""Infrastructure faults injected for real, through the CLI as Airflow runs it: a model file damaged in the
artifact store, the output's file system full while the predictor writes.

Each fails with exit 1 and one line that names the client, the file and the cause, and loses nothing:
every client's earlier output (files and bytes, no staging left), the registry's versions and aliases
are what they were (:func:`tests.helpers.snapshot`).
"""
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from categories_classification.records import CHAMPION
from categories_classification.serialization import DIGEST_TAG
from categories_classification.tracking.artifacts import load_model
from categories_classification.tracking.registry import champion_version
from categories_classification.errors import ModelIntegrityError
from categories_classification.training.trainer import train_model
from scripts.generate_example_data import ClientSpec, write_client
from tests.helpers import (
    DATE,
    FEATURES,
    flip_bytes_in_largest_entry,
    output_folder,
    read_output,
    run_cli,
    snapshot,
    stored_model_file,
    train_args,
    trained_and_predicted,
)

pytestmark = pytest.mark.slow
CLIENTS = ("small_a", "small_b")
DAMAGES = ("truncated", "flipped bytes")


def _predict(client_id: str) -> list[str]:
    return ["predictor", f"--client_id={client_id}", f"--inference_date={DATE}"]


@pytest.fixture(scope="module")
def stack(small_data, tmp_path_factory):
    """Two clients trained (8 trees) and predicted for DATE, with their own store and copy of the data."""
    return trained_and_predicted(small_data, tmp_path_factory.mktemp("infrastructure_faults"), CLIENTS)


@contextmanager
def _damaged(path: Path, damage: str) -> Iterator[None]:
    """``path`` damaged in place for the ``with`` block (cut in half, or bytes changed), then restored."""
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2] if damage == "truncated" else flip_bytes_in_largest_entry(good))
    try:
        yield
    finally:
        path.write_bytes(good)


def _assert_one_line(result, start: str) -> None:
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(start), result.stderr
    assert "unexpected" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_champion_file_is_refused_on_one_line_and_nothing_is_lost(stack, damage, tmp_path):
    data, env = stack
    store = env["MLFLOW_TRACKING_URI"]
    before = snapshot(data, store, CLIENTS)
    model_file = stored_model_file(store, "small_a", 1)
    with _damaged(model_file, damage):
        # A machine without a checked copy in its model cache downloads the file: refused.
        result = run_cli(_predict("small_a"), {**env, "CATEGORIES_MODEL_CACHE": str(tmp_path / "empty_cache")})
    _assert_one_line(result, "Error: client 'small_a': model small_a_model version 1: the stored file ")
    assert f"{model_file} does not match its digest (expected {DIGEST_TAG} " in result.stderr
    assert "set-champion --client_id=small_a" in result.stderr
    assert snapshot(data, store, CLIENTS) == before


def test_a_machine_holding_the_checked_copy_serves_it_though_the_stored_file_is_damaged(stack):
    data, env = stack
    before = read_output(data, "small_a")
    # The stack's predictions left small_a's file in its model cache, checked against the registered digest.
    with _damaged(stored_model_file(env["MLFLOW_TRACKING_URI"], "small_a", 1), "flipped bytes"):
        result = run_cli(_predict("small_a"), env)
    assert result.returncode == 0, result.stderr
    pd.testing.assert_frame_equal(read_output(data, "small_a").sort_values(["product_id", "rank"], ignore_index=True),
                                  before.sort_values(["product_id", "rank"], ignore_index=True))


def test_a_digest_mismatch_is_refused_before_the_file_is_deserialized(stack, monkeypatch):
    _, env = stack
    store = env["MLFLOW_TRACKING_URI"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    mlflow.set_tracking_uri(store)
    client = MlflowClient(store)
    registered = client.get_model_version("small_a_model", "1").tags[DIGEST_TAG]
    client.set_model_version_tag("small_a_model", "1", DIGEST_TAG, "0" * 64)
    try:
        champion = champion_version("small_a")
        assert champion is not None and champion.digest == "0" * 64  # read with the alias, no extra call
        # The file itself is intact and would load: the digest alone refuses it.
        with pytest.raises(ModelIntegrityError, match=f"does not match its digest .expected {DIGEST_TAG} 0{{64}}"):
            load_model(champion)
    finally:
        client.set_model_version_tag("small_a_model", "1", DIGEST_TAG, registered)
    # The digest recorded at registration is the stored file's: the same version loads.
    _, features = load_model(champion_version("small_a"))
    assert features == FEATURES


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_version_registered_without_a_digest_loads_with_a_warning_and_is_refused_when_damaged(stack, damage):
    data, env = stack
    store = env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(store)
    registered = client.get_model_version("small_b_model", "1").tags[DIGEST_TAG]
    client.delete_model_version_tag("small_b_model", "1", DIGEST_TAG)  # as before digests existed
    try:
        intact = run_cli(_predict("small_b"), env)
        assert intact.returncode == 0, intact.stderr
        assert f"small_b_model version 1 was registered without a {DIGEST_TAG} tag" in intact.stderr
        before = snapshot(data, store, CLIENTS)
        model_file = stored_model_file(store, "small_b", 1)
        with _damaged(model_file, damage):
            result = run_cli(_predict("small_b"), env)
    finally:
        client.set_model_version_tag("small_b_model", "1", DIGEST_TAG, registered)
    _assert_one_line(result, "Error: client 'small_b': model small_b_model version 1: the stored file ")
    assert f"{model_file} cannot be read (" in result.stderr and "expected an intact skops zip file" in result.stderr
    assert snapshot(data, store, CLIENTS) == before


def test_a_training_whose_champion_file_is_damaged_fails_on_one_line_and_the_champion_stays(stack):
    data, env = stack
    store = env["MLFLOW_TRACKING_URI"]
    before = snapshot(data, store, CLIENTS)
    with _damaged(stored_model_file(store, "small_a", 1), "flipped bytes"):
        result = run_cli(train_args("small_a", params='{"n_estimators": 8}'), env)
    # The promotion gate loads the champion to compare: refused, so the new version is not promoted.
    _assert_one_line(result, "Error: client 'small_a': model small_a_model version 1: the stored file ")
    assert "does not match its digest" in result.stderr
    after = snapshot(data, store, CLIENTS)
    versions, aliases = after.pop("small_a_model")
    assert versions == [*before.pop("small_a_model")[0], 2] and aliases == {CHAMPION: 1}
    assert after == before


@pytest.mark.usefixtures("tracking_store")
def test_a_full_output_file_system_fails_on_one_line_and_keeps_the_earlier_output(small_tmpfs, tmp_path):
    inputs = tmp_path / "inputs"  # the inputs live off the small file system; only the output is on it
    write_client(ClientSpec("big", 5, n_train=800, n_predict=400, n_categories=10), inputs / "fits")
    # 60,000 products give about 3 MB of parquet: more than the 2 MiB file system holds.
    write_client(ClientSpec("big", 5, n_train=800, n_predict=60_000, n_categories=10), inputs / "too_big")
    train_model("big", FEATURES, {"n_estimators": 8}, DATE, data_prefix=str(inputs / "fits"))
    data = small_tmpfs / "data"
    data.mkdir()
    (data / "prediction").symlink_to(inputs / "fits" / "prediction")
    env = dict(os.environ, DATA_PREFIX=str(data), SPARK_MASTER="local[2]")
    earlier = run_cli(_predict("big"), env)
    assert earlier.returncode == 0, earlier.stderr
    store = os.environ["MLFLOW_TRACKING_URI"]
    before = snapshot(data, store, ["big"])

    (data / "prediction").unlink()
    (data / "prediction").symlink_to(inputs / "too_big" / "prediction")
    result = run_cli(_predict("big"), env)
    _assert_one_line(result, f"Error: client 'big': output {output_folder(data, 'big')}: Spark failed while scoring "
                             f"{data / 'prediction' / 'client_id=big' / 'data_predict.csv.gz'} and writing it: ")
    assert result.stderr.endswith("java.io.IOException: No space left on device; nothing written, the output of "
                                  "this date is left as it was\n"), result.stderr
    assert snapshot(data, store, ["big"]) == before
