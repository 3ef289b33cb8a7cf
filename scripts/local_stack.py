"""The local stack without Docker: Airflow standalone (:8080) and an MLflow server (:5000).

    python -m scripts.local_stack init     # AIRFLOW_HOME in the project, db migrated, dags/ folder
    python -m scripts.local_stack start    # both servers in the background, waits until they answer
    python -m scripts.local_stack stop     # stops exactly the processes `start` started
    python -m scripts.local_stack e2e      # start, run client_0's DAGs through the REST API, stop

Servers bind to 127.0.0.1 only. Pid files and logs are in ``.run/``; the Airflow admin password
stays in ``$AIRFLOW_HOME`` (git-ignored).
"""
import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from scripts._processes import alive, spawn_detached, stop_group

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
HOST = "127.0.0.1"
AIRFLOW_PORT = int(os.environ.get("AIRFLOW_PORT", "8080"))
MLFLOW_PORT = int(os.environ.get("MLFLOW_PORT", "5000"))
AIRFLOW_URL = f"http://{HOST}:{AIRFLOW_PORT}"
MLFLOW_URL = f"http://{HOST}:{MLFLOW_PORT}"
BIN = Path(sys.executable).parent  # the pipenv environment's bin/ (airflow, mlflow)


def airflow_home() -> Path:
    """``$AIRFLOW_HOME``, else ``airflow_home/`` in the project (never ~/airflow)."""
    return Path(os.environ.get("AIRFLOW_HOME") or ROOT / "airflow_home").resolve()


def _airflow_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(airflow_home()),
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__API__HOST=HOST,
        AIRFLOW__API__PORT=str(AIRFLOW_PORT),
        # New DAG files and unpause requests are picked up within seconds, not minutes.
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="10",
        AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL="10",
        # Tasks (the CLI) log and register in the stack's MLflow server.
        MLFLOW_TRACKING_URI=MLFLOW_URL,
        CATEGORIES_PROJECT_DIR=str(ROOT),
    )
    return env


def init() -> None:
    """Prepare AIRFLOW_HOME and migrate Airflow's metadata database."""
    airflow_home().mkdir(parents=True, exist_ok=True)
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=_airflow_env(), check=True,
                   stdout=subprocess.DEVNULL, timeout=600)
    print(f"Airflow home: {airflow_home()} (DAGs folder: {ROOT / 'dags'}, examples off)")


def start() -> None:
    """Start MLflow and Airflow in the background and wait until both answer."""
    RUN_DIR.mkdir(exist_ok=True)
    if not (airflow_home() / "airflow.db").exists():
        init()
    _spawn("mlflow", [str(BIN / "mlflow"), "server", "--host", HOST, "--port", str(MLFLOW_PORT),
                      "--backend-store-uri", f"sqlite:///{ROOT / 'mlflow.db'}",
                      "--artifacts-destination", str(ROOT / "mlartifacts"), "--workers", "1"], dict(os.environ))
    _spawn("airflow", [str(BIN / "airflow"), "standalone"], _airflow_env())
    _wait_for(f"{MLFLOW_URL}/health", "MLflow", 120)
    _wait_for(f"{AIRFLOW_URL}/api/v2/monitor/health", "Airflow", 300)
    print(f"MLflow UI:  {MLFLOW_URL}\nAirflow UI: {AIRFLOW_URL}  (user admin, password in "
          f"{airflow_home() / 'simple_auth_manager_passwords.json.generated'})\nLogs: {RUN_DIR}/*.log")


def stop() -> None:
    """Stop the process groups recorded in .run/*.pid (and nothing else)."""
    for name in ("airflow", "mlflow"):
        pid_file = RUN_DIR / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text(encoding="utf-8"))
        _stop_group(pid, name)
        pid_file.unlink()


def e2e() -> None:
    """What a user does: start, switch client_0's DAGs on, wait for success, check, stop."""
    start()
    try:
        token = _token()
        run_id = _run_dag("client_0-training", token)
        print(f"client_0-training run {run_id} succeeded")
        run_id = _run_dag("client_0-prediction", token)
        print(f"client_0-prediction run {run_id} succeeded")
        outputs = sorted((ROOT / "data/products_categories/client_id=client_0").glob("date=*"))
        if not outputs or not list(outputs[-1].glob("*.parquet")):
            raise SystemExit("e2e: no parquet output for client_0")
        print(f"e2e ok: output in {outputs[-1]}")
    finally:
        stop()


def _spawn(name: str, command: list[str], env: dict[str, str]) -> None:
    pid_file = RUN_DIR / f"{name}.pid"
    if pid_file.exists() and alive(int(pid_file.read_text(encoding="utf-8"))):
        print(f"{name} already running (pid {pid_file.read_text(encoding='utf-8')})")
        return
    # The server and all its children form one group that stop() can end.
    process = spawn_detached(command, RUN_DIR / f"{name}.log", env, ROOT)
    pid_file.write_text(str(process.pid), encoding="utf-8")


def _stop_group(pid: int, name: str, grace: float = 30.0) -> None:
    if stop_group(pid, grace):
        print(f"stopped {name} (pid {pid})")
    else:
        print(f"killed {name} (pid {pid}) after {grace:.0f}s")


def _wait_for(url: str, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # nosec: loopback only
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(2)
    stop()
    raise SystemExit(f"{what} did not answer at {url} within {timeout:.0f}s: see {RUN_DIR}")


def _request(method: str, path: str, token: Optional[str] = None, body: Optional[dict] = None) -> Any:
    request = urllib.request.Request(f"{AIRFLOW_URL}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(request, timeout=30) as response:  # nosec: loopback only
        return json.loads(response.read() or b"null")


def _token() -> str:
    passwords = airflow_home() / "simple_auth_manager_passwords.json.generated"
    deadline = time.monotonic() + 60
    while not passwords.exists() and time.monotonic() < deadline:
        time.sleep(1)
    users = json.loads(passwords.read_text(encoding="utf-8"))
    username, password = next(iter(users.items()))
    return _request("POST", "/auth/token", body={"username": username, "password": password})["access_token"]


def _run_dag(dag_id: str, token: str, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while True:  # the dag processor parses dags/ a few seconds after start
        try:
            _request("GET", f"/api/v2/dags/{dag_id}", token)
            break
        except urllib.error.HTTPError as exc:
            if exc.code != 404 or time.monotonic() > deadline:
                raise
            time.sleep(3)
    _request("PATCH", f"/api/v2/dags/{dag_id}", token, {"is_paused": False})
    # Switching the DAG on may also schedule its latest interval; an explicit run of our own is
    # the one we wait for, so that an old successful run can never pass for this one.
    run_id = _request("POST", f"/api/v2/dags/{dag_id}/dagRuns", token, {"logical_date": None})["dag_run_id"]
    while time.monotonic() < deadline:
        state = _request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", token)["state"]
        if state == "success":
            return run_id
        if state == "failed":
            raise SystemExit(f"e2e: {dag_id} run {run_id} failed: see the task log in {airflow_home() / 'logs'}")
        time.sleep(3)
    raise SystemExit(f"e2e: {dag_id} run {run_id} did not finish within {timeout:.0f}s")


def main(argv: Optional[list[str]] = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("action", choices=("init", "start", "stop", "e2e"), help="what to do")
    parser.add_argument("--profile", choices=("standalone", "celery"), default=os.environ.get("PROFILE") or "standalone",
                        help="standalone (SQLite, the default) or celery (scripts/celery_stack.py); env PROFILE")
    args = parser.parse_args(argv)
    if args.profile == "celery":
        from scripts import celery_stack  # pylint: disable=import-outside-toplevel
        actions = {"init": celery_stack.start, "start": celery_stack.start, "stop": celery_stack.stop,
                   "e2e": celery_stack.e2e}
    else:
        actions = {"init": init, "start": start, "stop": stop, "e2e": e2e}
    actions[args.action]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
