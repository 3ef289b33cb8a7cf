"""The artifact store's file system full while a training writes its record (a 2 MiB tmpfs, mounted by the
test as root, skipped otherwise), filled so that each write of a training fails in turn: the first model
file, the model's folder half-way, the evaluation files after the whole model.

Each attempt fails with exit 1 and one line naming the client, the artifact store and ENOSPC; no version
is registered (none left without its gate decision), none of the attempt's files stay in the store, its
run is FAILED with the reason, the champion is unchanged; once room is made, the next training succeeds.
"""
import json
import math
import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from categories_classification.records import (
    CHAMPION,
    FAILURE_REASON_TAG,
    PROMOTION_DECISION_TAG,
    experiment_name,
    model_name,
)
from categories_classification.training.trainer import train_model
from scripts.generate_example_data import write_client
from tests.helpers import DATE, FEATURES, SMALL_CLIENTS, run_cli, train_args

pytestmark = pytest.mark.slow
CLIENT = SMALL_CLIENTS[1]  # small_b: 500 rows, 3 categories
PARAMS = {"n_estimators": 4, "max_leaf_nodes": 16}  # size bounded: no size search, the same model each time
FAMILY = "random_forest"
PAGE = 4096  # what tmpfs charges a file for, per started page


def _pages(files: list[Path]) -> int:
    return sum(PAGE * math.ceil(path.stat().st_size / PAGE) for path in files)


def _files(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


def _fill(mount: Path, room: int) -> Path:
    """A file taking all of ``mount``'s free space but ``room`` bytes."""
    stats = os.statvfs(mount)
    filler = mount / "filler"
    size = stats.f_bavail * stats.f_frsize - room
    assert size > 0, f"the file system has only {stats.f_bavail * stats.f_frsize} bytes free"
    with filler.open("wb") as handle:
        handle.write(b"\0" * size)
    return filler


def _store_on(mount: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """The client's data and a SQLite store under ``root`` whose artifacts (``mlartifacts/``) are on ``mount``;
    the client trained once (version 1, champion)."""
    data, store = root / "data", root / "store"
    write_client(CLIENT, data)
    store.mkdir()
    # The store's database stays on the large disk; its artifacts (mlartifacts/, beside it) are on the tmpfs.
    (store / "mlartifacts").symlink_to(mount, target_is_directory=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    champion = train_model(CLIENT.client_id, FEATURES, PARAMS, DATE, data_prefix=str(data), family=FAMILY)
    assert champion.version == 1 and champion.decision.promote
    return data, uri


def _rooms(mount: Path) -> dict[str, tuple[int, str]]:
    """How much room is left -> where the training's writes hit the full file system (from version 1's files)."""
    model_files = [path for path in mount.rglob("*") if path.is_file() and "/models/m-" in str(path)]
    evaluation = [path for path in mount.rglob("*") if path.is_file() and "/evaluation/" in str(path)]
    assert model_files and evaluation
    rooms = {"no room at all": (0, "/models/m-"),
             "half the model's folder": (_pages(model_files) // 2, "/models/m-"),
             "the model, not the evaluation files": (_pages(model_files) + 2 * PAGE, "/artifacts/evaluation/")}
    assert rooms["the model, not the evaluation files"][0] < _pages(model_files) + _pages(evaluation) // 2
    return rooms


def test_a_full_artifact_store_fails_each_write_on_one_line_registers_nothing_and_leaves_nothing(
        small_tmpfs, tmp_path, monkeypatch):
    data, uri = _store_on(small_tmpfs, tmp_path, monkeypatch)
    client = MlflowClient(uri)
    name = model_name(CLIENT.client_id)
    experiment = client.get_experiment_by_name(experiment_name(CLIENT.client_id))
    before = _files(small_tmpfs)
    env = dict(os.environ, DATA_PREFIX=str(data), MLFLOW_TRACKING_URI=uri)
    args = [*train_args(CLIENT.client_id, params=json.dumps(PARAMS)), f"--model_family={FAMILY}"]
    for what, (room, failed_in) in _rooms(small_tmpfs).items():
        filler = _fill(small_tmpfs, room)
        result = run_cli(args, env)
        filler.unlink()

        assert result.returncode == 1, (what, result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1, (what, result.stderr)
        assert lines[0].startswith(f"Error: client '{CLIENT.client_id}': the artifact store at "
                                   f"{Path(small_tmpfs).as_uri()}/{experiment.name} failed while the training was "
                                   "written: ENOSPC (No space left on device) at "), (what, lines[0])
        assert failed_in in lines[0].split(" at ")[-1], (what, lines[0])
        assert lines[0].endswith("this attempt's files were removed and nothing was registered, the champion is "
                                 "unchanged"), (what, lines[0])
        # No version without its gate decision: none was registered (or it was deleted), the champion stays.
        versions = client.search_model_versions(f"name = '{name}'")
        assert [int(version.version) for version in versions] == [1], what
        assert client.get_registered_model(name).aliases == {CHAMPION: 1}, what
        # None of the attempt's files is left in the store.
        assert _files(small_tmpfs) == before, (what, sorted(_files(small_tmpfs) - before))
        runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
        assert not [run for run in runs if run.info.status == "RUNNING"], what
        assert runs[0].info.status == "FAILED", what
        assert "ENOSPC (No space left on device)" in runs[0].data.tags[FAILURE_REASON_TAG], what

    # Room back: the next training succeeds, registers version 2 and records its gate decision.
    result = run_cli(args, env)
    assert result.returncode == 0, result.stderr
    assert f"registered {name} version 2" in result.stdout
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags.get(PROMOTION_DECISION_TAG)
    assert sorted(int(version.version) for version in client.search_model_versions(f"name = '{name}'")) == [1, 2]
