"""A hostile config rendered into DAGs and *run* by Airflow executes nothing: values arrive verbatim.

Client ids and feature names are validated (letters, digits, '_'); the only free text that reaches
a DAG's bash command is a RandomForest parameter value, here ``class_weight`` keys, and a run's
conf ``model_params`` (through the task's environment). A stand-in ``pipenv`` first on PATH
records the arguments the BashOperators pass, and the MLflow run context, instead of running.
"""
import json
import os
import sys

import pytest
import yaml

from tests.e2e.conftest import dags_test

pytestmark = pytest.mark.slow
_RECORDER = """#!{python}
import json, os, sys
with open(os.environ["ARGV_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps([sys.argv[1:], os.environ.get("MLFLOW_RUN_CONTEXT")]) + "\\n")
"""


def test_hostile_parameter_values_reach_the_cli_verbatim_and_run_nothing(make_airflow_env, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    hostile = {
        f"x'; touch {marks}/quote; echo '": 1.0,
        f"$(touch {marks}/subshell)": 1.0,
        f"`touch {marks}/backtick`": 1.0,
        f'a"; touch {marks}/double; "': 1.0,
        f"line\ntouch {marks}/newline": 1.0,
        f"; touch {marks}/semicolon #": 1.0,
        "../../../../etc/passwd": 1.0,
        "{{ 7 * 7 }} {% raw %}": 2.0,
        "%(ds)s ${HOME}": 1.0,
    }
    config = {"hostile": {"features": ["f0", "f1"], "params": {"class_weight": hostile, "n_estimators": 5}}}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recorder = bin_dir / "pipenv"
    recorder.write_text(_RECORDER.format(python=sys.executable), encoding="utf-8")
    recorder.chmod(0o755)
    argv_log = tmp_path / "argv.jsonl"
    project = tmp_path / "project"  # the task's cwd: must stay empty
    project.mkdir()
    env = make_airflow_env(yaml.safe_dump(config), str(bin_dir), ARGV_LOG=str(argv_log),
                           CATEGORIES_PROJECT_DIR=str(project))

    conf_params = {"class_weight": {key.replace("quote", "conf_quote"): 2.0 for key in hostile}, "max_depth": 1}
    dags_test(env, "hostile-training", conf={"model_params": conf_params})

    (train, context), (publish, _) = [json.loads(line) for line in argv_log.read_text(encoding="utf-8").splitlines()]
    assert train[:4] == ["run", "python", "categories_classification_cli.py", "trainer"]
    words = [word[2:].split("=", 1) for word in train[4:]]
    options = dict(words)
    assert options["client_id"] == "hostile"
    assert json.loads(options["features"]) == ["f0", "f1"]
    # The config's parameters, then the run's conf: the last one wins, every key byte for byte.
    assert [json.loads(value) for key, value in words if key == "model_params"] == [config["hostile"]["params"], conf_params]
    assert options["training_date"].startswith("2026-11-23T00:00:00")
    context = json.loads(context)  # what MLflow tags the training's run with
    assert sorted(context) == ["airflow_dag_id", "airflow_dag_run_id"] and context["airflow_dag_id"] == "hostile-training"
    assert publish == ["run", "python", "categories_classification_cli.py", "champion-from-run", "--client_id=hostile"]
    assert os.listdir(marks) == [] and os.listdir(project) == []
