"""The Spark JVM's class-data archive for real: built once, used by the next session, and never in a session's way.

Each session runs in a process of its own (the archive is read when a JVM starts).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from categories_classification.prediction import jvm
from tests.helpers import wait_until

# A session and one job through the project's get_spark, from two threads at once (one session is built).
_SESSION = """
from concurrent.futures import ThreadPoolExecutor
from categories_classification.prediction.spark import get_spark, start_session

first = start_session()
second = ThreadPoolExecutor(1).submit(get_spark)
assert first.result().sparkContext.applicationId == second.result().sparkContext.applicationId
assert first.result().range(0, 100, 1, 2).mapInArrow(lambda batches: batches, "id long").count() == 100
print("ok")
"""


def _session(folder: Path, log: Path) -> str:
    """Run :data:`_SESSION` with the archives in ``folder``; the JVM logs what it does with them into ``log``."""
    env = {**_env(folder), "JDK_JAVA_OPTIONS": f"-Xlog:cds=info:file={log}"}
    completed = subprocess.run([sys.executable, "-c", _SESSION], env=env, capture_output=True, text=True, timeout=300,
                               check=False)
    assert completed.returncode == 0 and "ok" in completed.stdout, completed.stderr[-3000:]
    return log.read_text(encoding="utf-8", errors="replace")


def _env(folder: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("SPARK_REMOTE", "PYSPARK_SUBMIT_ARGS")}
    return {**env, jvm.ARCHIVE_VARIABLE: str(folder), "SPARK_MASTER": "local[2]"}


@pytest.fixture(name="built", scope="module")
def _built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("archives")
    completed = subprocess.run(
        [sys.executable, "-c", "from categories_classification.prediction import jvm; print(jvm.ensure_archive())"],
        env=_env(folder), capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return folder, Path(completed.stdout.strip().splitlines()[-1])


def test_a_built_archive_is_complete_and_alone_in_its_folder(built):
    folder, archive = built
    assert archive.is_file() and archive.parent == folder
    assert archive.stat().st_size > 10_000_000  # Spark's classes, not a stub
    assert sorted(path.name for path in folder.iterdir()) == [archive.name]  # no part file, no lock left


def test_the_next_session_maps_the_archive(built, tmp_path):
    folder, archive = built
    log = _session(folder, tmp_path / "cds.log")
    assert f"Opened archive {archive}" in log or f"Opened dynamic archive {archive}" in log, log[-3000:]


def test_an_archive_that_does_not_match_this_jvm_is_refused_and_the_session_runs(built, tmp_path):
    archive = built[1]
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / archive.name).write_bytes(b"not an archive of this JVM" * 1000)
    _session(damaged, tmp_path / "cds.log")  # starts and runs a job: the JVM ignores the file


def test_with_no_archive_a_session_starts_without_and_one_build_beside_it_writes_the_archive(tmp_path):
    folder = tmp_path / "archives"
    log = _session(folder, tmp_path / "cds.log")
    assert "Opened dynamic archive" not in log
    # The build runs detached (not a child of the command): its lock is in the folder until the archive is.
    wait_until(lambda: list(folder.glob("*.jsa")) and not list(folder.glob("*.lock")), 300,
               "the background build's archive")
    assert sorted(path.suffix for path in folder.iterdir()) == [".jsa", ".log"]  # and its log: no part file left
