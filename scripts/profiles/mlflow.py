"""The one MLflow server command line: the stacks, the tests' servers and the benchmarks all start it from here."""
import os
import sys
from pathlib import Path
from typing import Mapping, Optional

from scripts.supervisor import HOST, ProcessSpec, http_ok

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def server_spec(port: int, backend_uri: str, artifacts: Path, *, serve_artifacts: bool = True, name: str = "mlflow",
                env: Optional[Mapping[str, str]] = None, timeout: float = 120.0) -> ProcessSpec:
    """An MLflow server on 127.0.0.1:``port`` over ``backend_uri``, healthy once ``/health`` answers.

    The store's URI may hold a password: it goes in the environment, never on a command line
    ``ps`` shows. ``serve_artifacts``: the server proxies artifacts into ``artifacts`` (a folder);
    without, a run's artifacts go where its experiment says, a folder under ``artifacts`` recorded
    as a local path, so that a client on the store itself (the CLI on SQLite) reads what the
    server's clients logged, and the other way round (with serving, they would be recorded as
    ``mlflow-artifacts:`` URIs that only a client of this server can resolve).
    """
    command = [MLFLOW, "server", "--host", HOST, "--port", str(port), "--workers", "1"]
    command += (["--artifacts-destination", str(artifacts)] if serve_artifacts
                else ["--no-serve-artifacts", "--default-artifact-root", artifacts.as_uri()])
    health = f"http://{HOST}:{port}/health"
    return ProcessSpec(name, command, dict(os.environ if env is None else env, MLFLOW_BACKEND_STORE_URI=backend_uri),
                       health=lambda: http_ok(health, timeout=2.0), timeout=timeout)
