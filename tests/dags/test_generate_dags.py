"""scripts/generate_dags.py: rendering, order, stale files, bad configs, committed dags/ in sync."""
import ast
import dataclasses
from datetime import datetime
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import jinja2
import pytest

import categories_classification_cli
from categories_classification.config import ClientConfig, load_config
from scripts.generate_dags import CONF_PARAMS_VARIABLE, GENERATED_MARKER, main, render_dags
from tests.helpers import ROOT

GOOD = "zeta:\n  features: [a, b]\nalpha:\n  features: [x]\n  params: {n_estimators: 7, max_depth: 3}\n"


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "clients.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _generate(tmp_path, text):
    out = tmp_path / "dags"
    return main(["--config", str(_config(tmp_path, text)), "--output-dir", str(out)]), out


def test_renders_two_valid_python_files_per_client(tmp_path):
    code, out = _generate(tmp_path, GOOD)
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "alpha_prediction.py", "alpha_training.py", "zeta_prediction.py", "zeta_training.py"]
    for path in out.iterdir():
        text = path.read_text(encoding="utf-8")
        assert text.startswith(GENERATED_MARKER) and "do not edit" in text.splitlines()[0]
        ast.parse(text)
    training = (out / "alpha_training.py").read_text(encoding="utf-8")
    assert "dag_id='alpha-training'" in training
    assert """--model_params=\\'{"max_depth": 3, "n_estimators": 7}\\'""" in training


def test_output_is_deterministic_and_unchanged_files_are_not_rewritten(tmp_path):
    _, out = _generate(tmp_path, GOOD)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    _generate(tmp_path, "alpha:\n  features: [x]\n  params: {max_depth: 3, n_estimators: 7}\nzeta:\n  features: [a, b]\n")
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert before == after


def test_removed_clients_lose_their_generated_files_only(tmp_path):
    _, out = _generate(tmp_path, GOOD)
    (out / "hand_written.py").write_text("# mine\n", encoding="utf-8")
    code, _ = _generate(tmp_path, "zeta:\n  features: [a, b]\n")
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["hand_written.py", "zeta_prediction.py", "zeta_training.py"]


@pytest.mark.parametrize("text, message", [
    ("'bad-id':\n  features: [x]\n", "client id: expected letters, digits and '_'"),
    ("ok:\n  features: []\n", "client 'ok': config file"),
    ("ok:\n  features: [x]\n  params: {n_trees: 3}\n", "unknown RandomForestClassifier parameter(s) 'n_trees'"),
    ("ok:\n  features: x\n", "key 'features'"),
    ("ok:\n  features: [x]\nok:\n  features: [y]\n", "duplicate key 'ok'"),
    ("'a;rm -rf /':\n  features: [x]\n", "client id"),
    ("ok:\n  features: ['$(touch pwned)']\n", "not allowed"),
])
def test_bad_config_writes_and_deletes_nothing(tmp_path, capsys, text, message):
    _, out = _generate(tmp_path, GOOD)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _ = _generate(tmp_path, text)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("Error: ") and message in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_hostile_param_strings_are_inert_shell_words_and_jinja_literals(tmp_path):
    hostile = "x'; touch /tmp/pwned; echo '{{ 7*7 }}$(id)`id`"
    code, out = _generate(tmp_path, f"ok:\n  features: [x]\n  params:\n    class_weight: {{\"{hostile}\": 1}}\n")
    assert code == 0
    command = ast.literal_eval(next(line.split("bash_command=", 1)[1].rstrip(",")
                                    for line in (out / "ok_training.py").read_text(encoding="utf-8").splitlines()
                                    if "bash_command=" in line))
    environment = jinja2.Environment()
    environment.filters["ts"] = lambda value: value.isoformat()
    rendered = environment.from_string(command).render(dag_run={"logical_date": None, "run_after": datetime(2026, 11, 23)})
    words = shlex.split(rendered)
    assert words[:5] == ["pipenv", "run", "python", "categories_classification_cli.py", "trainer"]
    assert f"--model_params={{\"class_weight\": {{\"{hostile}\": 1}}}}" in words


def test_generated_dags_pass_ruffs_airflow_rules(tmp_path):
    _, out = _generate(tmp_path, GOOD)
    result = subprocess.run([str(Path(sys.executable).with_name("ruff")), "check", "--no-cache", "--select", "AIR",
                             str(out)], capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_doc_md_names_the_config_the_dags_came_from(tmp_path):
    _, out = _generate(tmp_path, GOOD)
    for path in out.iterdir():
        text = path.read_text(encoding="utf-8")
        assert "Generated from `clients.yaml`;" in text and "conf/clients_config.yaml" not in text


def test_committed_dags_are_the_generators_output(tmp_path):
    out = tmp_path / "dags"
    result = subprocess.run([sys.executable, "-m", "scripts.generate_dags", "--config", "conf/clients_config.yaml",
                             "--output-dir", str(out)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    committed = {p.name: p.read_bytes() for p in (ROOT / "dags").glob("*.py")}
    assert {p.name: p.read_bytes() for p in out.glob("*.py")} == committed


def test_clients_are_rendered_in_sorted_order(tmp_path):

    files = render_dags(load_config(_config(tmp_path, "b2:\n  features: [x]\na1:\n  features: [x]\nB0:\n  features: [x]\n")))
    assert list(files) == ["B0_training.py", "B0_prediction.py", "a1_training.py", "a1_prediction.py",
                           "b2_training.py", "b2_prediction.py"]


def test_promotion_tolerance_is_passed_to_the_trainer(tmp_path):
    _, out = _generate(tmp_path, "ok:\n  features: [x]\n  promotion_tolerance: 0.05\n")
    assert "--promotion_tolerance=0.05 --training_date=" in (out / "ok_training.py").read_text(encoding="utf-8")


def test_both_dags_of_a_client_name_its_champion_asset_from_its_validated_id(tmp_path):
    _, out = _generate(tmp_path, GOOD)
    asset = "CHAMPION = Asset(name='alpha_model@champion', uri='x-categories://models/alpha_model/champion')\n"
    assert asset in (out / "alpha_training.py").read_text(encoding="utf-8")
    prediction = (out / "alpha_prediction.py").read_text(encoding="utf-8")
    assert asset in prediction and "assets=CHAMPION)" in prediction


@pytest.mark.parametrize("conf_params", ["", '{"n_estimators": 1}', "x'; touch pwned; echo '$(id)`id` *"])
def test_a_runs_conf_params_reach_the_trainer_as_one_word_last(tmp_path, conf_params):
    _, out = _generate(tmp_path, GOOD)
    command = ast.literal_eval(next(line.split("bash_command=", 1)[1].rstrip(",")
                                    for line in (out / "alpha_training.py").read_text(encoding="utf-8").splitlines()
                                    if "bash_command=" in line and "trainer" in line))
    # What bash makes of the command (its Jinja part aside), with the variable the task's env sets.
    command = command.replace("pipenv run python categories_classification_cli.py", "printf '%s\\0'", 1)
    result = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, check=True,
                            env={"PATH": "/usr/bin:/bin", CONF_PARAMS_VARIABLE: conf_params})
    words = result.stdout.decode().split("\0")[:-1]
    assert words[:2] == ["trainer", "--client_id=alpha"] and words[3] == '--model_params={"max_depth": 3, "n_estimators": 7}'
    assert words[5:] == ([f"--model_params={conf_params}"] if conf_params else [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clients.yaml", "dags"]  # nothing ran


# Where each per-client setting of the config is used: the DAG whose command must carry it, or None
# for the fleet view's own (fleet-status reads the config itself). A new setting must be placed here.
SETTING_USED_BY = {"features": "training", "params": "training", "family": "training", "promotion_tolerance": "training",
                   "max_model_mb": "training", "drift_threshold": "prediction", "max_model_age_days": None}
# The CLI option that carries a setting, where its name is not the setting's.
OPTION_OF = {"features": "features", "params": "model_params", "family": "model_family"}


def test_every_client_setting_reaches_the_command_of_the_dag_that_uses_it(tmp_path):
    assert set(SETTING_USED_BY) == {field.name for field in dataclasses.fields(ClientConfig)} - {"client_id"}
    _, out = _generate(tmp_path, "ok:\n  features: [a, b]\n  family: extra_trees\n  params: {n_estimators: 7}\n"
                                 "  promotion_tolerance: 0.05\n  max_model_mb: 3.5\n  drift_threshold: 0.001\n"
                                 "  max_model_age_days: 9\n")
    client = load_config(tmp_path / "clients.yaml").get("ok")
    options = {kind: _cli_options(out / f"ok_{kind}.py") for kind in ("training", "prediction")}
    for setting, kind in SETTING_USED_BY.items():
        if kind is not None:
            value = getattr(client, setting)
            found = options[kind][OPTION_OF.get(setting, setting)]
            assert found == (list(value) if setting == "features" else value), f"{setting} in the {kind} DAG"
    # predict-all's default is the config's 0.2 too: a client without the key gets it in its DAG.
    _, out = _generate(tmp_path, GOOD)
    assert _cli_options(out / "zeta_prediction.py")["drift_threshold"] == 0.2


def _task_words(dag_file: Path) -> list[str]:
    """The words bash makes of the first task's command, as Airflow renders it for a run due on 2026-11-23
    without a run conf (each word printed by printf, nothing run)."""
    command = ast.literal_eval(next(line.split("bash_command=", 1)[1].rstrip(",")
                                    for line in dag_file.read_text(encoding="utf-8").splitlines()
                                    if "bash_command=" in line))
    environment = jinja2.Environment()
    environment.filters["ts"] = lambda value: value.isoformat()
    environment.filters["ds"] = lambda value: value.date().isoformat()
    rendered = environment.from_string(command).render(dag_run={"logical_date": None, "run_after": datetime(2026, 11, 23)})
    result = subprocess.run(["bash", "-c", f"printf '%s\\0' {rendered}"], cwd=dag_file.parent, capture_output=True,
                            check=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    return result.stdout.decode().split("\0")[:-1]


def _cli_options(dag_file: Path) -> dict[str, Any]:
    """The options of the DAG's CLI call, parsed by the CLI's own command (not run)."""
    words = _task_words(dag_file)
    assert words[:4] == ["pipenv", "run", "python", "categories_classification_cli.py"]
    command = categories_classification_cli.cli.commands[words[4]]
    with command.make_context(words[4], words[5:]) as context:
        return dict(context.params)
