"""The shared Spark Connect session: the package shipped once per version, not per command.

Each command below is a new process on a real service, as Airflow's tasks are: the commands find
the package in the session the service's start opened and shipped it into (no upload), and its
workers import it from there; a command of another package version gets a session of its own and
ships its package there, once; a session the service has closed is skipped for the next one.
"""
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from categories_classification.prediction.spark import SESSION_GENERATIONS, package_digest, session_ids
from scripts.spark_connect import Service, start_service
from scripts.supervisor import free_ports

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# One command: connect as the CLI does (optionally as another package version), count the package's uploads,
# and ask a worker where it imported the package's scoring module from.
COMMAND = """
import json, sys
from categories_classification.prediction import spark
if sys.argv[1]:
    spark._DIGEST[:] = [sys.argv[1]]
uploads = []
upload = spark._ship_package
spark._ship_package = lambda session: (uploads.append(1), upload(session))
session = spark.get_spark()

def where(batches):
    import pyarrow as pa
    from categories_classification.prediction import scoring
    for _ in batches:
        yield pa.RecordBatch.from_pylist([{"file": scoring.__file__}])

file = session.range(1).mapInArrow(where, "file string").first()["file"]
print(json.dumps({"session": session.session_id, "uploads": len(uploads), "file": file}))
"""
RELEASE = """
import sys
from pyspark.sql import SparkSession
SparkSession.builder.remote(sys.argv[1]).create().client.release_session()
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with start_service(port=free_ports(1)[0], master="local[2]", run_dir=tmp_path_factory.mktemp("connect")) as running:
        yield running


def _command(service: Service, digest: str = "") -> dict:
    done = subprocess.run([sys.executable, "-c", COMMAND, digest], cwd=ROOT, capture_output=True, text=True,
                          timeout=180, check=False, env=dict(os.environ, SPARK_REMOTE=service.url))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_commands_find_the_package_shipped_by_the_service_start_and_the_workers_import_it(service):
    first, second = _command(service), _command(service)
    assert first["session"] == second["session"] == session_ids(package_digest(), 1)[0]
    assert (first["uploads"], second["uploads"]) == (0, 0)
    shipped = f"categories_classification-{package_digest()[:16]}.zip"
    assert shipped in first["file"] and shipped in second["file"]  # the shipped package, not this checkout


def test_another_package_version_gets_a_session_of_its_own_and_ships(service):
    ours = _command(service)
    other_digest = uuid.uuid4().hex * 2
    other = _command(service, other_digest)
    assert other["session"] == session_ids(other_digest, 1)[0] != ours["session"]
    assert other["uploads"] == 1
    assert f"categories_classification-{other_digest[:16]}.zip" in other["file"]
    assert _command(service, other_digest)["uploads"] == 0


def test_a_session_the_service_closed_is_skipped_for_the_next(service):
    digest = uuid.uuid4().hex * 2
    ids = session_ids(digest, SESSION_GENERATIONS)
    assert _command(service, digest)["session"] == ids[0]
    subprocess.run([sys.executable, "-c", RELEASE, f"{service.url}/;session_id={ids[0]}"], cwd=ROOT, check=True,
                   timeout=120, capture_output=True)
    after = _command(service, digest)
    assert (after["session"], after["uploads"]) == (ids[1], 1)
