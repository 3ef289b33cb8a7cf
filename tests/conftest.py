"""Shared fixtures: a temp data prefix with generated clients, a temp MLflow store, a local Spark, a throwaway
PostgreSQL server."""
import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator, Optional

import mlflow
import pytest

from categories_classification.prediction.spark import get_spark
from scripts import services
from scripts._processes import stop_group
from scripts.generate_example_data import write_client
from tests.helpers import SMALL_CLIENTS

# Airflow writes to ~/airflow on a bare import; point it at a throwaway folder for the whole run.
if "AIRFLOW_HOME" not in os.environ:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="airflow_home_tests_")
    atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)



@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data prefix holding two small generated clients (12 and 3 categories)."""
    root = tmp_path_factory.mktemp("data")
    for spec in SMALL_CLIENTS:
        write_client(spec, root)
    return root


@pytest.fixture()
def tracking_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh SQLite MLflow store for one test (artifacts beside it)."""
    store = tmp_path / "mlflow"
    store.mkdir()
    _use_store(monkeypatch, store)
    return store


@pytest.fixture(scope="module")
def module_tracking_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A SQLite MLflow store shared by the tests of one module (trainings are not free)."""
    store = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        _use_store(patch, store)
        yield store


def _use_store(patch: pytest.MonkeyPatch, store: Path) -> None:
    # The environment is what the code reads; MLflow's global URI is what test-side clients use.
    uri = f"sqlite:///{store / 'mlflow.db'}"
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)


@pytest.fixture()
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted on a fresh folder: a file system that fills up for real. Needs root (skipped
    otherwise); always unmounted at teardown."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        # A lazy unmount if something still holds a file there (it goes once that process exits).
        if subprocess.run(["umount", str(mount_point)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


@pytest.fixture(scope="session")
def spark():
    """One real local Spark session (2 cores) for the whole test run."""
    os.environ.setdefault("SPARK_MASTER", "local[2]")
    session = get_spark("categories_classification_tests")
    yield session
    session.stop()


class MlflowServer:
    """A real `mlflow server` on a loopback port, over a SQLite store (or ``backend_uri``) and artifacts in ``root``.

    ``stop()`` and ``start()`` again (same port, same store) simulate an outage and recovery.
    """

    def __init__(self, root: Path, backend_uri: Optional[str] = None) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.root = root
        self.url = f"http://127.0.0.1:{self.port}"
        self.backend_uri = backend_uri or f"sqlite:///{root / 'server.db'}"
        self._process: Optional[subprocess.Popen] = None

    def start(self) -> None:
        """Start the server and wait until it answers /health (90 s at most)."""
        log_path = self.root / "mlflow_server.log"
        command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                   "--port", str(self.port), "--artifacts-destination", str(self.root / "server_artifacts"),
                   "--workers", "1"]
        # The store's URI may hold a password: in the environment, not on a command line `ps` shows.
        env = dict(os.environ, MLFLOW_BACKEND_STORE_URI=self.backend_uri)
        with log_path.open("ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,  # pylint: disable=consider-using-with
                                             start_new_session=True)
        _wait_until_healthy(self.url, self._process, log_path, timeout=180)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server's process group (SIGTERM, or ``sig``; SIGKILL after 20 s)."""
        if self._process is not None:
            _stop(self._process, sig)


@pytest.fixture()
def mlflow_server_control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowServer]:
    """A started :class:`MlflowServer` that the test may stop and restart; always stopped at teardown."""
    yield from _serve(MlflowServer(tmp_path), monkeypatch)


def _serve(server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowServer]:
    try:
        server.start()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        mlflow.set_tracking_uri(server.url)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[services.Postgres]:
    """A throwaway PostgreSQL server on a free loopback port for the whole run (skipped without the binaries)."""
    if not services.postgres_available():
        pytest.skip(f"PostgreSQL server binaries not found in {services.POSTGRES_BIN} (Debian package postgresql-15)")
    # Not under pytest's own temp folder: that one is private to root, and the server runs as another user.
    root = Path(tempfile.mkdtemp(prefix="categories_postgres_tests_"))
    root.chmod(0o755)
    try:
        with services.start_postgres(run_dir=root / "postgres", port=services.free_port()) as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def postgres_database(postgres: services.Postgres) -> str:  # pylint: disable=redefined-outer-name
    """The SQLAlchemy URL (with its password: never print it) of a new, empty database on :func:`postgres`."""
    return services.sqlalchemy_url(postgres.create_database(f"mlflow_{uuid.uuid4().hex[:12]}"))


@pytest.fixture()
def mlflow_server_on_postgres(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              postgres_database: str) -> Iterator[str]:  # pylint: disable=redefined-outer-name
    """The URL of a real `mlflow server` whose backend store is a new PostgreSQL database (MLflow migrates it).

    Commands get ``CATEGORIES_LOCK_URL`` (that database), as the Celery profile's tasks do: the
    promotion lock is PostgreSQL's.
    """
    monkeypatch.setenv("CATEGORIES_LOCK_URL", postgres_database)
    for server in _serve(MlflowServer(tmp_path, backend_uri=postgres_database), monkeypatch):
        yield server.url


@pytest.fixture()
def mlflow_server(mlflow_server_control: MlflowServer) -> str:
    """The URL of a real `mlflow server` on a free loopback port (stopped at teardown, within 30 s)."""
    return mlflow_server_control.url


def _wait_until_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not answer within {timeout}s: {log.read_text()[-2000:]}")


def _stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is not None:
        return
    if sig != signal.SIGTERM:  # an outage on purpose (e.g. SIGKILL): no grace period
        os.killpg(process.pid, sig)
        process.wait(timeout=10)
        return
    stop_group(process.pid, grace=20, reaper=process.poll)
