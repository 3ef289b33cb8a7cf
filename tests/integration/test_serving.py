"""A registered champion with stock MLflow: spark_udf with its defaults, and `mlflow models serve` from a fresh
virtualenv built from the model's own requirements, away from the project; both give the batch's top-5."""
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Iterator

import mlflow
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from categories_classification.paths import predict_path
from categories_classification.prediction.predictor import predict_categories
from categories_classification.records import CHAMPION, model_name
from categories_classification.tracking.flavor import log_and_register, serving_signature
from categories_classification.tracking.runs import ensure_experiment
from categories_classification.serving import TopKCategories
from categories_classification.training.fitting import fit_model
from categories_classification.training.trainer import train_model
from scripts.supervisor import free_port, spawn_detached, stop_group, wait_for_http
from scripts.generate_example_data import ClientSpec, write_client
from tests.helpers import DATE, FEATURES, ROOT, exploded, read_output

pytestmark = pytest.mark.slow

CLIENT = "serve_a"
URI = f"models:/{model_name(CLIENT)}@{CHAMPION}"
PIP_SECONDS = 900  # a cold pip cache downloads MLflow and its dependencies once
SERVER_SECONDS = 120


@pytest.fixture(scope="module")
def served(module_tracking_store: Path, tmp_path_factory: pytest.TempPathFactory, spark) -> Iterator[Path]:
    """A client trained (its family chosen as in production) and predicted for DATE; yields the data prefix."""
    del module_tracking_store  # used for its side effect: this module's own store
    prefix = tmp_path_factory.mktemp("serving_data")
    write_client(ClientSpec(CLIENT, 103, n_train=900, n_predict=300, n_categories=12), prefix)
    train_model(CLIENT, FEATURES, {}, DATE, data_prefix=str(prefix))
    predict_categories(CLIENT, DATE, data_prefix=str(prefix), spark=spark)
    yield prefix


def _products(prefix: Path) -> pd.DataFrame:
    return pd.read_csv(predict_path(CLIENT, str(prefix)), dtype={"product_id": str})


def test_spark_udf_with_its_defaults_gives_the_batch_top_5(served: Path, spark):
    products = _products(served)
    udf = mlflow.pyfunc.spark_udf(spark, URI, env_manager="local")  # result type from the declared outputs
    rows = spark.createDataFrame(products).select(udf(F.struct(*products.columns)).alias("top")).select("top.*")
    # The README's way back to the batch's rows.
    result = rows.select("product_id", F.inline(F.arrays_zip("pred_label", "pred_score", "rank"))).toPandas()
    pd.testing.assert_frame_equal(result.sort_values(["product_id", "rank"]).reset_index(drop=True),
                                  read_output(served, CLIENT), check_exact=True)


_PLAIN_PYTHON = """
import json, sys, mlflow, pandas as pd
products = pd.DataFrame(json.load(sys.stdin))
rows = mlflow.pyfunc.load_model(sys.argv[1]).predict(products).to_dict(orient="records")
print(json.dumps({"rows": rows, "code": sys.modules["categories_classification.calibrated"].__file__}))
"""


def test_an_ensemble_of_pipelines_and_a_forest_loads_in_a_plain_python_elsewhere(module_tracking_store: Path,
                                                                                  tmp_path: Path):
    del module_tracking_store  # this module's store
    rng = np.random.default_rng(4)
    x = pd.DataFrame(rng.random((120, len(FEATURES))), columns=FEATURES)
    model = fit_model(x, rng.choice(["a", "b", "c", "d"], 120), {"mlp": {"hidden_layer_sizes": (8,), "max_iter": 50},
                                                                  "random_forest": {"n_estimators": 3}},
                      family="mlp+qda+random_forest").model
    with mlflow.start_run(experiment_id=ensure_experiment("serve_ens")):  # artifacts beside the store
        ref = log_and_register("serve_ens", model, x.head(5), serving_signature(FEATURES))
    products = pd.DataFrame(rng.random((7, len(FEATURES))), columns=FEATURES).assign(product_id=[f"p{i}" for i in range(7)])
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", _PLAIN_PYTHON, ref.uri], input=json.dumps(products.to_dict(orient="records")),
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout)
    # The copy shipped in the model's folder, not the project's.
    assert not Path(answer["code"]).is_relative_to(ROOT) and "/artifacts/code/categories_classification/" in answer["code"]
    loaded = pd.DataFrame(answer["rows"])
    expected = TopKCategories(model, FEATURES).predict(products)
    pd.testing.assert_frame_equal(exploded(loaded), exploded(expected), check_exact=True)


_WITH_THE_PROJECT = """
import json, sys, mlflow, pandas as pd
rows = mlflow.pyfunc.load_model(sys.argv[1]).predict(pd.DataFrame(json.load(sys.stdin)))  # its code first on sys.path
import categories_classification.prediction.scoring  # what the project's own job imports next in a reused worker
print(json.dumps({"rows": rows.to_dict(orient="records"), "package": sys.modules["categories_classification"].__path__[0],
                  "code": sys.modules["categories_classification.calibrated"].__file__}))
"""


def test_a_loaded_model_shadows_nothing_of_the_project_where_both_are_importable(served: Path, tmp_path: Path):
    # A Spark worker that ran a spark_udf of a champion is reused by the project's own scoring job.
    products = _products(served)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", _WITH_THE_PROJECT, URI], input=json.dumps(products.to_dict(orient="records")),
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout)
    assert Path(answer["package"]) == ROOT / "categories_classification"
    assert Path(answer["code"]).is_relative_to(ROOT)
    pd.testing.assert_frame_equal(exploded(pd.DataFrame(answer["rows"])), read_output(served, CLIENT), check_exact=True)


def _post(url: str, body: dict) -> pd.DataFrame:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:  # nosec: loopback only
        return pd.DataFrame(json.loads(response.read())["predictions"])


def test_a_fresh_venv_from_the_models_requirements_serves_the_batch_top_5(served: Path, tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"  # no project here, nor on the new venv's path
    elsewhere.mkdir()
    venv = tmp_path / "venv"
    try:
        _serve_from_fresh_venv(served, venv, elsewhere)
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # most of a GB: not left in pytest's kept temp folders


def _serve_from_fresh_venv(prefix: Path, venv: Path, elsewhere: Path) -> None:
    requirements = mlflow.pyfunc.get_model_dependencies(URI)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # pip's own configuration (index, cache) as the user has it: only the model's recorded requirements.
    # --no-compile: Python compiles what it imports anyway; compiling every installed file costs seconds.
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-compile", "-r", requirements],
                               cwd=elsewhere,
                               capture_output=True, text=True, timeout=PIP_SECONDS, check=False)
    assert installed.returncode == 0, installed.stderr[-2000:]
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    isolated = subprocess.run([str(python), "-c", "import categories_classification"], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=60, check=False)
    assert "No module named 'categories_classification'" in isolated.stderr

    port, log = free_port(), elsewhere / "serve.log"
    server = spawn_detached([str(venv / "bin" / "mlflow"), "models", "serve", "-m", URI, "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port)], log, env, elsewhere)
    try:
        def running() -> None:
            if server.poll() is not None:
                raise AssertionError(f"mlflow models serve exited: {log.read_text()[-2000:]}")

        assert wait_for_http(f"http://127.0.0.1:{port}/ping", SERVER_SECONDS, running), "no answer on /ping"
        products = _products(prefix)
        top = _post(f"http://127.0.0.1:{port}/invocations", {"dataframe_split": products.to_dict(orient="split")})
        pd.testing.assert_frame_equal(exploded(top), read_output(prefix, CLIENT), check_exact=True)
        three = _post(f"http://127.0.0.1:{port}/invocations",
                      {"dataframe_records": products.head(2).to_dict(orient="records"), "params": {"k": 3}})
        assert three["rank"].tolist() == [[0, 1, 2], [0, 1, 2]]
    finally:
        stop_group(server.pid, grace=20, reaper=server.poll)
