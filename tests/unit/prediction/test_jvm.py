"""The Spark JVM's class-data archive: where it lives, what names it, when a command uses it (no JVM started)."""
import os
import time
from pathlib import Path

import pytest

from categories_classification.prediction import jvm


@pytest.fixture(name="java_home", autouse=True)
def _java_home(tmp_path, monkeypatch):
    """A stand-in JDK: bin/java and lib/server/libjvm.so (the key reads their paths, sizes and times only)."""
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    (home / "lib" / "server").mkdir(parents=True)
    (home / "bin" / "java").write_text("#!/bin/sh\n", encoding="utf-8")
    (home / "lib" / "server" / "libjvm.so").write_bytes(b"jvm")
    monkeypatch.setenv("JAVA_HOME", str(home))
    return home


def test_archives_off_means_no_archive_and_no_option(monkeypatch):
    monkeypatch.setenv(jvm.ARCHIVE_VARIABLE, "off")
    assert jvm.archive_path() is None
    assert jvm.class_data_option() == ""


def test_the_archive_is_named_by_the_jvm_it_must_match(tmp_path, monkeypatch, java_home):
    monkeypatch.setenv(jvm.ARCHIVE_VARIABLE, str(tmp_path / "archives"))
    first = jvm.archive_path()
    assert first.parent == tmp_path / "archives" and first.name.startswith("spark-") and first.suffix == ".jsa"
    assert jvm.archive_path() == first
    (java_home / "lib" / "server" / "libjvm.so").write_bytes(b"another build of the jvm")
    assert jvm.archive_path() != first  # a JDK updated in place: a new archive, never the old one


def test_spark_installed_again_at_the_same_path_gets_a_new_archive(tmp_path, monkeypatch):
    import pyspark  # pylint: disable=import-outside-toplevel

    jars = tmp_path / "pyspark" / "jars"
    jars.mkdir(parents=True)
    monkeypatch.setattr(pyspark, "__file__", str(jars.parent / "__init__.py"))
    monkeypatch.setenv(jvm.ARCHIVE_VARIABLE, str(tmp_path / "archives"))
    first = jvm.archive_path()
    assert jvm.archive_path() == first
    later = time.time() + 60
    os.utime(jars, (later, later))  # the jars written again (a virtual environment made again)
    assert jvm.archive_path() != first


def test_an_existing_archive_is_used_and_kept_from_pruning(tmp_path, monkeypatch):
    monkeypatch.setenv(jvm.ARCHIVE_VARIABLE, str(tmp_path))
    archive = jvm.archive_path()
    archive.write_bytes(b"archive")
    _age(archive, days=30)
    assert jvm.class_data_option() == f"-XX:SharedArchiveFile={archive}"
    assert time.time() - archive.stat().st_mtime < 60


def test_archives_unused_for_a_week_go_when_another_is_needed_and_nothing_else(tmp_path, monkeypatch):
    folder = tmp_path / "archives"
    folder.mkdir()
    monkeypatch.setenv(jvm.ARCHIVE_VARIABLE, str(folder))
    archive = jvm.archive_path()
    lock = archive.with_name(archive.name + ".lock")
    lock.touch()  # a build runs: none is started here
    old_java, recent, not_ours = folder / "spark-0123456789abcdef.jsa", folder / "spark-fedcba9876543210.jsa", folder / "notes.txt"
    for path in (old_java, old_java.with_name(old_java.name + ".log"), recent, not_ours):
        path.write_bytes(b"x")
    for path in (old_java, old_java.with_name(old_java.name + ".log"), not_ours):
        _age(path, days=8)
    assert jvm.class_data_option() == ""
    assert sorted(path.name for path in folder.iterdir()) == sorted([lock.name, recent.name, not_ours.name])


def _age(path: Path, days: float) -> None:
    then = time.time() - days * 24 * 3600
    os.utime(path, (then, then))


def test_while_a_build_holds_the_lock_a_command_starts_without_archive_and_starts_no_build(tmp_path, monkeypatch):
    folder = tmp_path / "archives"
    folder.mkdir()
    monkeypatch.setenv(jvm.ARCHIVE_VARIABLE, str(folder))
    archive = jvm.archive_path()
    lock = archive.with_name(archive.name + ".lock")
    lock.touch()
    assert jvm.class_data_option() == ""
    assert sorted(path.name for path in folder.iterdir()) == [lock.name]  # no build log: nothing started


def test_a_lock_left_by_a_build_that_failed_a_day_ago_is_taken_again(tmp_path, monkeypatch):
    monkeypatch.setenv(jvm.ARCHIVE_VARIABLE, str(tmp_path))
    archive = jvm.archive_path()
    lock = archive.with_name(archive.name + ".lock")
    lock.touch()
    assert not jvm._take_lock(archive)  # pylint: disable=protected-access
    old = time.time() - jvm.BUILD_LOCK_SECONDS - 60
    os.utime(lock, (old, old))
    assert jvm._take_lock(archive)  # pylint: disable=protected-access
    assert lock.stat().st_mtime > old


def test_no_java_found_means_no_archive(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nowhere"))
    assert jvm.archive_path() is None


def test_the_jvm_log_is_named_per_process_unless_given(monkeypatch, tmp_path):
    monkeypatch.delenv("SPARK_JVM_LOG", raising=False)
    assert jvm.log_path("app") == jvm.scratch_folder() / f"app-{os.getpid()}.log"
    monkeypatch.setenv("SPARK_JVM_LOG", str(tmp_path / "jvm.log"))
    assert jvm.log_path("app") == Path(tmp_path / "jvm.log")
