"""Shared fixtures: a temp data prefix with generated clients, a temp MLflow store, a local Spark, a throwaway
PostgreSQL server."""
import atexit
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional

import mlflow
import pytest
from xdist.scheduler import LoadFileScheduling

from categories_classification.prediction.spark import get_spark
from scripts import services
from scripts.profiles.test_servers import MlflowServer
from scripts.supervisor import free_port
from scripts.generate_example_data import write_client
from tests.helpers import SMALL_CLIENTS

# Airflow writes to ~/airflow on a bare import; point it at a throwaway folder for the whole run.
if "AIRFLOW_HOME" not in os.environ:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="airflow_home_tests_")
    atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)


# The test files that start a whole Airflow stack (API server, scheduler, DAG processor, workers, MLflow):
# `make test` (xdist, --dist loadfile) runs them on one worker, one after the other, as if they were one
# file. Two stacks at once on 2 cores starve each other's health checks and REST calls.
AIRFLOW_STACK_FILES = frozenset({
    "tests/e2e/test_celery_stack.py", "tests/e2e/test_celery_worker_lost.py", "tests/e2e/test_local_stack.py",
    "tests/e2e/test_prediction_follows_promotion.py", "tests/faults/test_redis_restart.py"})


class _FilesAndAirflowStacks(LoadFileScheduling):  # pylint: disable=abstract-method  # as xdist's own (work stealing only)
    """xdist's whole-file scheduling, with :data:`AIRFLOW_STACK_FILES` as one unit."""

    def _split_scope(self, nodeid: str) -> str:
        file = super()._split_scope(nodeid)
        return "airflow stacks" if file in AIRFLOW_STACK_FILES else file


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Optional[LoadFileScheduling]:
    """``--dist loadfile`` groups the Airflow stack files; any other ``--dist`` is xdist's own."""
    return _FilesAndAirflowStacks(config, log) if config.getvalue("dist") == "loadfile" else None


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
        with services.start_postgres(run_dir=root / "postgres", port=free_port()) as server:
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
