"""The shared Spark Connect session's pure parts: its ids, the URL that names one, the package archive (no Spark)."""
import uuid
import zipfile

from categories_classification.prediction.spark import package_archive, package_digest, session_ids, with_session_id


def test_the_session_ids_are_valid_stable_per_package_and_day_and_distinct_per_generation():
    ids = session_ids("a" * 64, 3, day="2026-11-23")
    assert ids == session_ids("a" * 64, 3, day="2026-11-23")
    assert len(set(ids)) == 3
    assert all(uuid.UUID(value).version == 4 for value in ids)  # what pyspark and the service accept
    assert not set(ids) & set(session_ids("b" * 64, 3, day="2026-11-23"))  # another package version: other sessions
    assert not set(ids) & set(session_ids("a" * 64, 3, day="2026-11-24"))  # another day: afresh


def test_the_session_id_joins_the_urls_parameters():
    assert with_session_id("sc://127.0.0.1:15002", "s") == "sc://127.0.0.1:15002/;session_id=s"
    assert with_session_id("sc://host:1/", "s") == "sc://host:1/;session_id=s"
    assert with_session_id("sc://host:1/;token=t;use_ssl=true", "s") == "sc://host:1/;token=t;use_ssl=true;session_id=s"


def test_the_package_archive_is_the_same_bytes_for_the_same_files(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    archive = package_archive(first)
    assert archive.name == f"categories_classification-{package_digest()[:16]}.zip"
    assert archive.read_bytes() == package_archive(second).read_bytes()
    with zipfile.ZipFile(archive) as bundle:
        assert "categories_classification/prediction/scoring.py" in bundle.namelist()
