"""promotion_lock: one gate at a time per client, across processes; its lock files are git-ignored (processes)."""
import shutil
import subprocess

import pytest

from categories_classification.tracking.locks import lock_file
from tests.helpers import ROOT, assert_one_gate_at_a_time_per_client


@pytest.mark.slow  # two Python processes that import MLflow
def test_a_second_process_waits_for_the_same_clients_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert_one_gate_at_a_time_per_client(tmp_path)
    # Every lock of the store sits in one hidden folder, none beside the store itself.
    assert (tmp_path / ".mlflow.db.locks" / "client_0_model.lock").exists()
    assert not list(tmp_path.glob("*.lock"))


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_lock_folder_of_the_projects_store_is_git_ignored(tmp_path):
    lock = lock_file(tmp_path / "mlflow.db", "client_0_model")
    # Where the same lock goes for the project's default store (mlflow.db at the root).
    in_project = ROOT / lock.relative_to(tmp_path)
    ignored = subprocess.run(["git", "check-ignore", "--quiet", str(in_project)], cwd=ROOT, check=False, timeout=30)
    assert ignored.returncode == 0, f"{in_project.relative_to(ROOT)} is not git-ignored"
