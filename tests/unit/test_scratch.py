"""What a machine keeps between commands goes once unused for a week, and nothing else goes."""
import os
import time
from pathlib import Path

from categories_classification import scratch


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_files_unused_for_a_week_are_removed_recent_and_used_ones_kept(tmp_path):
    old, recent, used, inside = tmp_path / "old.log", tmp_path / "recent.log", tmp_path / "used.zip", tmp_path / "sub"
    inside.mkdir()
    for path in (old, recent, used, inside / "old.log"):
        path.write_bytes(b"x")
    for path in (old, used, inside / "old.log", inside):
        _age(path, scratch.MAX_AGE_SECONDS + 60)
    _age(recent, scratch.MAX_AGE_SECONDS - 3600)
    scratch.mark_used(used)
    scratch.prune(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["recent.log", "sub", "used.zip"]
    assert (inside / "old.log").exists()  # a subfolder is not ours to walk


def test_only_the_files_named_like_the_pattern_are_pruned(tmp_path):
    for name in ("spark-1.jsa", "spark-1.jsa.log", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
        _age(tmp_path / name, scratch.MAX_AGE_SECONDS + 60)
    scratch.prune(tmp_path, "spark-*.jsa*")
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


def test_a_folder_not_there_and_a_file_not_there_are_nothing_to_do(tmp_path):
    scratch.prune(tmp_path / "missing")
    scratch.mark_used(tmp_path / "missing.log")
    assert not list(tmp_path.iterdir())
