"""Faults injected for real: the predictor killed (SIGKILL) while it writes its output."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from categories_classification.trainer import train_model
from scripts.generate_example_data import ClientSpec, write_client
from tests.conftest import FEATURES

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
DATE = "2026-11-23"


def _predictor(env):
    return subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, str(ROOT / "categories_classification_cli.py"), "predictor", "--client_id=big",
         f"--inference_date={DATE}"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["product_id", "rank"]).reset_index(drop=True)


@pytest.mark.usefixtures("tracking_store")
def test_predictor_killed_mid_write_keeps_previous_output_and_next_run_replaces_it(tmp_path):
    prefix = tmp_path / "data"
    write_client(ClientSpec("big", 5, n_train=800, n_predict=150_000, n_categories=10), prefix)
    train_model("big", FEATURES, {"n_estimators": 30}, DATE, data_prefix=str(prefix))
    env = dict(os.environ, DATA_PREFIX=str(prefix), SPARK_MASTER="local[2]")
    folder = prefix / "products_categories/client_id=big"
    first = _predictor(env)
    assert first.wait(timeout=600) == 0, first.stderr.read().decode()[-2000:]
    previous = _sorted(pd.read_parquet(folder / f"date={DATE}"))
    manifest = (folder / f"date={DATE}" / "_manifest.json").read_bytes()

    victim = _predictor(env)
    deadline = time.monotonic() + 300
    while not list(folder.glob("_staging-*")) and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.05)
    assert victim.poll() is None, "the predictor finished before it could be killed mid-write"
    os.killpg(victim.pid, signal.SIGKILL)  # the driver and its JVM and Python workers
    victim.wait(timeout=60)

    pd.testing.assert_frame_equal(_sorted(pd.read_parquet(folder / f"date={DATE}")), previous)
    assert (folder / f"date={DATE}" / "_manifest.json").read_bytes() == manifest

    retry = _predictor(env)
    assert retry.wait(timeout=600) == 0, retry.stderr.read().decode()[-2000:]
    assert sorted(path.name for path in folder.iterdir()) == [f"date={DATE}"]  # no staging left over
    output = pd.read_parquet(folder / f"date={DATE}")
    assert len(output) == 5 * 150_000 and (output.groupby("product_id").size() == 5).all()
    assert (folder / f"date={DATE}" / "_manifest.json").read_bytes() != manifest  # replaced whole
