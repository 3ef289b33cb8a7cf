"""The one client of a local stack's Airflow REST API: the stacks, the e2e proofs, the tests and the benchmarks use it.

    client = AirflowClient("http://127.0.0.1:8080", airflow_home)   # logs in as the generated admin on first use
    run_id = client.trigger("client_0-training")                     # waits until parsed, switches on, runs now
    client.wait("client_0-training", run_id)                          # "success" or "failed"
"""
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from scripts.supervisor import wait_for

# A read answered 5xx is asked again, this many times, a second apart: on SQLite the API server
# can fail a read while the scheduler holds the database (e.g. as it creates an asset-triggered run).
READ_RETRIES = 3
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"


class RunError(RuntimeError):
    """A DAG run failed or did not finish in time."""


class AirflowClient:
    """The REST calls a user makes: log in, switch a DAG on, trigger a run, watch it (JSON in, JSON out)."""

    def __init__(self, url: str, airflow_home: Path, token: str = "") -> None:
        self.url = url
        self.airflow_home = airflow_home
        self._token = token

    def request(self, method: str, path: str, body: Optional[dict] = None) -> Any:
        """One JSON call (logged in on first use); a read that got a 5xx is retried, a write never.
        HTTP errors raise ``urllib.error.HTTPError``."""
        if not self._token and path != "/auth/token":
            self._token = self.login()
        headers = {"Content-Type": "application/json",
                   **({"Authorization": f"Bearer {self._token}"} if self._token else {})}
        request = urllib.request.Request(f"{self.url}{path}", method=method, headers=headers,
                                         data=json.dumps(body).encode() if body is not None else None)
        failed = 0
        while True:
            try:
                with urllib.request.urlopen(request, timeout=30) as response:  # nosec: loopback only
                    return json.loads(response.read() or b"null")
            except urllib.error.HTTPError as exc:
                failed += 1
                if method != "GET" or exc.code < 500 or failed > READ_RETRIES:
                    raise
                time.sleep(1.0)

    def login(self) -> str:
        """A bearer token for the generated admin user (its password file appears at the API server's start)."""
        passwords = self.airflow_home / PASSWORDS_FILE
        wait_for(passwords.exists, 60)
        username, password = next(iter(json.loads(passwords.read_text(encoding="utf-8")).items()))
        return self.request("POST", "/auth/token", {"username": username, "password": password})["access_token"]

    def dag(self, dag_id: str) -> Optional[dict]:
        """The DAG's details, or None while the DAG processor has not registered it."""
        try:
            return self.request("GET", f"/api/v2/dags/{dag_id}")
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            return None

    def wait_for_dag(self, dag_id: str, timeout: float = 300) -> None:
        """Wait until the DAG processor has registered ``dag_id`` (TimeoutError after ``timeout`` s)."""
        if not wait_for(lambda: self.dag(dag_id) is not None, timeout):
            raise TimeoutError(f"{dag_id} not registered within {timeout:.0f}s")

    def set_paused(self, dag_id: str, paused: bool) -> None:
        """Switch ``dag_id`` off (True) or on."""
        self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": paused})

    def trigger(self, dag_id: str, conf: Optional[dict] = None, timeout: float = 300) -> str:
        """Wait until ``dag_id`` is registered, switch it on, start a run of it now (with ``conf``); its run id."""
        self.wait_for_dag(dag_id, timeout)
        self.set_paused(dag_id, False)
        # Switching the DAG on may also schedule its latest interval; an explicit run of our own is
        # the one we wait for, so that an old successful run can never pass for this one.
        body = {"logical_date": None, **({"conf": conf} if conf is not None else {})}
        return self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict:
        """One run's details (``state``, ``run_after``, ``run_type``...)."""
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def state(self, dag_id: str, run_id: str) -> str:
        """A run's state (queued, running, success, failed)."""
        return self.run(dag_id, run_id)["state"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """The run's task instances (state, try number, hostname...); run ``~``: every run's."""
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict:
        """One task instance of a run."""
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")

    def wait(self, dag_id: str, run_id: str, timeout: float = 900) -> str:
        """Wait until the run is finished; its final state (:class:`RunError` if not within ``timeout`` s)."""
        state = wait_for(lambda: (found := self.state(dag_id, run_id)) in ("success", "failed") and found, timeout,
                         interval=2.0)
        if not state:
            raise RunError(f"{dag_id} run {run_id} did not finish within {timeout:.0f}s")
        return state

    def run_dag(self, dag_id: str, timeout: float = 900, conf: Optional[dict] = None) -> str:
        """Trigger ``dag_id`` (with ``conf``) and wait for its run to succeed (:class:`RunError` if not); its run id."""
        run_id = self.trigger(dag_id, conf, timeout)
        self.expect_success(dag_id, run_id, timeout)
        return run_id

    def expect_success(self, dag_id: str, run_id: str, timeout: float = 900) -> None:
        """Wait for a run; :class:`RunError` naming the task logs if it failed."""
        if self.wait(dag_id, run_id, timeout) != "success":
            raise RunError(f"{dag_id} run {run_id} failed: see the task log in {self.airflow_home / 'logs'}")
