"""Bad input, run through the CLI as Airflow does: one line, non-zero exit, and nothing lost.

"Nothing lost": every client's previous parquet output (files and bytes), the registry's
versions and the champion aliases are exactly what they were before the failed command.
"""
import gzip
import re
import shutil
from pathlib import Path

import pytest

from tests.helpers import DATE, run_cli, snapshot, train_args, trained_and_predicted

pytestmark = pytest.mark.slow
CLIENTS = ("small_a", "small_b")


@pytest.fixture(scope="module")
def stack(small_data, tmp_path_factory):
    """Two clients trained (n_estimators 8) and predicted for DATE, in a private copy of the data."""
    return trained_and_predicted(small_data, tmp_path_factory.mktemp("nothing_lost"), CLIENTS)


def _corrupt(data: Path, kind: str) -> None:
    """Damage small_a's training or prediction file (a fresh copy of the good one is kept)."""
    path = data / kind / "client_id=small_a" / ("data_train.csv.gz" if kind == "train" else "data_predict.csv.gz")
    good = path.with_name(path.name + ".good")
    if not good.exists():
        shutil.copy(path, good)
    text = gzip.decompress(good.read_bytes()).decode()
    lines = text.splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",not_a_number"
    path.write_bytes(gzip.compress("\n".join(lines).encode()))


def _restore(data: Path) -> None:
    for good in data.rglob("*.good"):
        shutil.move(good, good.with_name(good.name[:-len(".good")]))


@pytest.mark.parametrize("case, args, setup, expected", [
    ("DATA_PREFIX pointing nowhere (training)", train_args("small_a"), "nowhere",
     r"client 'small_a': file /nowhere/train/client_id=small_a/data_train.csv.gz: not found"),
    ("DATA_PREFIX pointing nowhere (prediction)", ["predictor", "--client_id=small_a", f"--inference_date={DATE}"],
     "nowhere", r"client 'small_a': file /nowhere/prediction/client_id=small_a/data_predict.csv.gz: not found"),
    ("configured feature missing", train_args("small_a", features=["f0", "f9"]), None, r"missing column\(s\) 'f9'"),
    ("non-numeric training value", train_args("small_a"), "train", r"not_a_number"),
    ("non-numeric prediction value", ["predictor", "--client_id=small_a", f"--inference_date={DATE}"], "prediction",
     r"a feature value is not a number"),
    ("unknown model parameter", train_args("small_a", params='{"n_trees": 3}'), None, r"unknown RandomForestClassifier"),
    ("pinned version that does not exist",
     ["predictor", "--client_id=small_a", f"--inference_date={DATE}", "--model_version=99"], None,
     r"has no version 99: expected one of 1"),
])
def test_a_failed_command_says_why_on_one_line_and_loses_nothing(stack, case, args, setup, expected):
    data, env = stack
    before = snapshot(data, env["MLFLOW_TRACKING_URI"], CLIENTS)
    run_env = dict(env, DATA_PREFIX="/nowhere") if setup == "nowhere" else env
    if setup in ("train", "prediction"):
        _corrupt(data, setup)
    try:
        result = run_cli(args, run_env)
    finally:
        _restore(data)
    assert result.returncode in (1, 2), case
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: client 'small_a': "), result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(expected, result.stderr), result.stderr
    assert snapshot(data, env["MLFLOW_TRACKING_URI"], CLIENTS) == before
