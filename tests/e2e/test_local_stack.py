"""The standalone profile of the local stack (`scripts/local_stack.py`, `scripts/profiles/standalone.py`) as a user
runs it, on ports and folders of its own, and the one Airflow REST client (`scripts/airflow_api.py`).

Issue #18: the DAG processor's settings scale with the folder (a new DAG file showing at once on
the demo config: `test_prediction_follows_promotion.py`, on the same stack as the flow's proof).
Issue #15: on a non-default AIRFLOW_PORT, tasks still reach the execution API (there too). Issue
#24: every socket is on loopback (Airflow's log servers are not started), `stop` ends everything
with SIGTERM, and a plain `airflow` command in the stack's AIRFLOW_HOME sees the stack's DAGs only.
"""
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error

import pytest

from scripts.airflow_api import AirflowClient
from scripts.generate_dags import main as generate_dags
from scripts.profiles import airflow, standalone
from tests.e2e.conftest import AIRFLOW, ROOT, wait_until_healthy
from tests.helpers import is_loopback, listening_sockets


def test_parsing_settings_are_responsive_for_a_demo_and_cheap_for_a_fleet():
    demo, fleet = airflow.parsing_settings(20, 2), airflow.parsing_settings(2000, 2)

    def value(settings: dict[str, str], option: str) -> int:
        return int(settings[f"AIRFLOW__DAG_PROCESSOR__{option}"])

    assert value(demo, "REFRESH_INTERVAL") <= 10 and value(demo, "MIN_FILE_PROCESS_INTERVAL") <= 30
    assert value(fleet, "REFRESH_INTERVAL") <= 60  # a new file still shows within about a minute
    assert value(fleet, "MIN_FILE_PROCESS_INTERVAL") >= 1800  # unchanged files: rarely
    assert value(fleet, "PARSING_PROCESSES") == 2 and value(airflow.parsing_settings(2000, 8), "PARSING_PROCESSES") == 8
    assert fleet["AIRFLOW__DAG_PROCESSOR__FILE_PARSING_SORT_MODE"] == "modified_time"  # changed files first


def test_airflow_env_follows_the_port_and_leaves_the_callers_settings(tmp_path):
    stack = standalone.Stack.from_env({"AIRFLOW_HOME": str(tmp_path), "DAGS_FOLDER": str(tmp_path),
                                       "AIRFLOW_PORT": "18080", "MLFLOW_PORT": "15000"})
    env = standalone.airflow_env(stack, {"AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "7"})

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
        client = AirflowClient(f"http://127.0.0.1:{server.server_port}", tmp_path, token="logged-in")
        assert client.request("GET", "/api/v2/dags") == {"ok": True}
        with pytest.raises(urllib.error.HTTPError):  # a write may have happened: never sent twice
            client.request("POST", "/api/v2/dags/x/dagRuns", body={})
    finally:
        server.shutdown()
    assert seen == ["GET", "GET", "GET", "POST"]


SMALL_CONFIG = "small_a:\n  features: [f0, f1]\nsmall_b:\n  features: [f0]\n"
SMALL_DAGS = ["small_a-prediction", "small_a-training", "small_b-prediction", "small_b-training"]


@pytest.mark.slow
def test_every_socket_of_the_stack_is_on_loopback_and_stop_ends_it_with_sigterm(stack_env, tmp_path):
    config = tmp_path / "clients.yaml"
    config.write_text(SMALL_CONFIG, encoding="utf-8")
    assert generate_dags(["--config", str(config), "--output-dir", stack_env["DAGS_FOLDER"]]) == 0
    stack = standalone.Stack.from_env(stack_env)
    try:
        subprocess.run([sys.executable, "-m", "scripts.local_stack", "start"], env=stack_env, cwd=ROOT, check=True,
                       capture_output=True, timeout=600)
        # Every component has started (and with it any server it would start: the scheduler's and the
        # triggerer's log servers did, on 0.0.0.0).
        wait_until_healthy(stack.airflow_url, 180)
        sockets = listening_sockets(pid for name in standalone.PROCESSES if (pid := stack.pid(name)) is not None)
        ports = {port for _, port in sockets}
        assert {stack.airflow_port, stack.mlflow_port, stack.spark_connect_port} <= ports, sockets
        assert [f"{address}:{port} ({command})" for (address, port), command in sockets.items()
                if not is_loopback(address)] == []
        started = time.monotonic()
        killed = standalone.stop(stack)
        stopped_in = time.monotonic() - started
    finally:
        standalone.stop(stack)
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
