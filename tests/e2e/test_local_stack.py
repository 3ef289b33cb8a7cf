"""The local stack (`scripts/local_stack.py`) as a user runs it, on ports and folders of its own.

Issue #18: a new DAG file shows in the running stack at once on the demo config, and the DAG
processor's settings scale with the folder. Issue #15: on a non-default AIRFLOW_PORT, tasks
still reach the execution API (they called :8080 before) and run to success. Issue #24: every
socket is on loopback (Airflow's log servers are not started), `stop` ends everything with
SIGTERM, and a plain `airflow` command in the stack's AIRFLOW_HOME sees the stack's DAGs only.
"""
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from scripts import local_stack
from scripts.generate_dags import main as generate_dags
from scripts.generate_example_data import ClientSpec, write_client
from tests.e2e.conftest import AIRFLOW, ROOT, running_stack, wait_until_healthy
from tests.helpers import is_loopback, listening_sockets

DEMO_CONFIG = ROOT / "conf" / "clients_config.yaml"


def test_parsing_settings_are_responsive_for_a_demo_and_cheap_for_a_fleet():
    demo, fleet = local_stack.parsing_settings(20, 2), local_stack.parsing_settings(2000, 2)

    def value(settings: dict[str, str], option: str) -> int:
        return int(settings[f"AIRFLOW__DAG_PROCESSOR__{option}"])

    assert value(demo, "REFRESH_INTERVAL") <= 10 and value(demo, "MIN_FILE_PROCESS_INTERVAL") <= 30
    assert value(fleet, "REFRESH_INTERVAL") <= 60  # a new file still shows within about a minute
    assert value(fleet, "MIN_FILE_PROCESS_INTERVAL") >= 1800  # unchanged files: rarely
    assert value(fleet, "PARSING_PROCESSES") == 2 and value(local_stack.parsing_settings(2000, 8), "PARSING_PROCESSES") == 8
    assert fleet["AIRFLOW__DAG_PROCESSOR__FILE_PARSING_SORT_MODE"] == "modified_time"  # changed files first


def test_airflow_env_follows_the_port_and_leaves_the_callers_settings(tmp_path):
    stack = local_stack.Stack.from_env({"AIRFLOW_HOME": str(tmp_path), "DAGS_FOLDER": str(tmp_path),
                                        "AIRFLOW_PORT": "18080", "MLFLOW_PORT": "15000"})
    env = local_stack.airflow_env(stack, {"AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "7"})

    assert env["AIRFLOW__API__PORT"] == "18080"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:15000"
    assert env["AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL"] == "7"


def test_a_read_answered_500_is_asked_again_and_a_write_is_not(tmp_path):
    answers = iter([500, 500, 200, 500])
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        """Answers with the next status of ``answers``."""

        def _answer(self) -> None:
            seen.append(self.command)
            code = next(answers)
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b'{"ok": true}' if code == 200 else b"")

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            """Quiet."""

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        stack = local_stack.Stack.from_env({"AIRFLOW_HOME": str(tmp_path), "AIRFLOW_PORT": str(server.server_port)})
        assert local_stack.api_request(stack, "GET", "/api/v2/dags") == {"ok": True}
        with pytest.raises(urllib.error.HTTPError):  # a write may have happened: never sent twice
            local_stack.api_request(stack, "POST", "/api/v2/dags/x/dagRuns", body={})
    finally:
        server.shutdown()
    assert seen == ["GET", "GET", "GET", "POST"]


@pytest.mark.slow
def test_demo_stack_on_other_ports_shows_a_new_dag_file_at_once_and_runs_a_task(stack_env, tmp_path):
    dags = Path(stack_env["DAGS_FOLDER"])
    assert generate_dags(["--config", str(DEMO_CONFIG), "--output-dir", str(dags)]) == 0
    write_client(ClientSpec("client_0", 0, n_train=600, n_predict=200, n_categories=5), Path(stack_env["DATA_PREFIX"]))
    extra = tmp_path / "extra.yaml"
    extra.write_text("client_new:\n  features: [f0, f1]\n", encoding="utf-8")
    assert generate_dags(["--config", str(extra), "--output-dir", str(tmp_path / "extra_dags")]) == 0

    with running_stack(stack_env) as stack:
        assert stack.airflow_port != 8080 and stack.mlflow_port != 5000
        token = local_stack.api_token(stack)
        local_stack.wait_for_dag(stack, "client_9-prediction", token, 120)

        staged = dags / ".client_new_training.py.tmp"
        shutil.copyfile(tmp_path / "extra_dags" / "client_new_training.py", staged)
        appeared = time.monotonic()
        os.replace(staged, dags / "client_new_training.py")
        local_stack.wait_for_dag(stack, "client_new-training", token, 60)
        assert time.monotonic() - appeared < 60

        local_stack.trigger_dag(stack, "client_0-training", token)
        assert _first_task_outcome(stack, token, "client_0-training", 420) == "success"
        client = MlflowClient(stack.mlflow_url)
        assert client.search_model_versions("name = 'client_0_model'")
        # Local paths, which the CLI on the SQLite store can read too (issue #15).
        assert client.get_experiment_by_name("categories_client_0").artifact_location.startswith("file:")


def _first_task_outcome(stack: local_stack.Stack, token: str, dag_id: str, timeout: float) -> str:
    """The end state of the first task of ``dag_id`` to finish (any run), or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    path = f"/api/v2/dags/{dag_id}/dagRuns/~/taskInstances"
    while time.monotonic() < deadline:
        try:
            states = [ti["state"] for ti in local_stack.api_request(stack, "GET", path, token)["task_instances"]]
        except urllib.error.URLError:
            states = []
        for state in ("success", "failed", "up_for_retry"):
            if state in states:
                return state
        time.sleep(2)
    raise AssertionError(f"no task of {dag_id} finished within {timeout:.0f}s: see {stack.airflow_home / 'logs'}")


SMALL_CONFIG = "small_a:\n  features: [f0, f1]\nsmall_b:\n  features: [f0]\n"
SMALL_DAGS = ["small_a-prediction", "small_a-training", "small_b-prediction", "small_b-training"]


@pytest.mark.slow
def test_every_socket_of_the_stack_is_on_loopback_and_stop_ends_it_with_sigterm(stack_env, tmp_path):
    config = tmp_path / "clients.yaml"
    config.write_text(SMALL_CONFIG, encoding="utf-8")
    assert generate_dags(["--config", str(config), "--output-dir", stack_env["DAGS_FOLDER"]]) == 0
    stack = local_stack.Stack.from_env(stack_env)
    try:
        subprocess.run([sys.executable, "-m", "scripts.local_stack", "start"], env=stack_env, cwd=ROOT, check=True,
                       capture_output=True, timeout=600)
        # Every component has started (and with it any server it would start: the scheduler's and the
        # triggerer's log servers did, on 0.0.0.0).
        wait_until_healthy(stack.airflow_url, 180)
        sockets = listening_sockets(pid for name in local_stack.PROCESSES if (pid := stack.pid(name)) is not None)
        ports = {port for _, port in sockets}
        assert {stack.airflow_port, stack.mlflow_port, stack.spark_connect_port} <= ports, sockets
        assert [f"{address}:{port} ({command})" for (address, port), command in sockets.items()
                if not is_loopback(address)] == []
        started = time.monotonic()
        killed = local_stack.stop(stack)
        stopped_in = time.monotonic() - started
    finally:
        local_stack.stop(stack)
    # Each step of `stop` has 30 s before SIGKILL: none was needed, and everything ended well within one.
    assert killed == [] and stopped_in < 30, (killed, stopped_in)


@pytest.mark.slow
def test_a_plain_airflow_command_in_the_stacks_home_sees_exactly_its_dags(stack_env, tmp_path):
    config = tmp_path / "clients.yaml"
    config.write_text(SMALL_CONFIG, encoding="utf-8")
    assert generate_dags(["--config", str(config), "--output-dir", stack_env["DAGS_FOLDER"]]) == 0
    subprocess.run([sys.executable, "-m", "scripts.local_stack", "init"], env=stack_env, cwd=ROOT, check=True,
                   capture_output=True, timeout=600)
    # What a user types in another shell: no AIRFLOW__* variables, only where the home is.
    plain = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AIRFLOW_HOME": stack_env["AIRFLOW_HOME"]}
    for command in (["dags", "reserialize"], ["dags", "list", "--output", "json"]):
        result = subprocess.run([AIRFLOW, *command], env=plain, cwd=tmp_path, capture_output=True, text=True,
                                timeout=300, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
    # Airflow logs a warning on stdout too (no graphviz): the listing is the JSON line.
    listed = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("[")))
    assert sorted(dag["dag_id"] for dag in listed) == SMALL_DAGS
