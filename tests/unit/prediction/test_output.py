"""The atomic swap, the recovery after a killed run, staging ownership and the per-client/date lock, on this
machine's file system (no Spark needed; real processes as owners and lock holders)."""
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from categories_classification.errors import ConfigError, InfrastructureError
from categories_classification.prediction.date_lock import ConcurrentRunError, date_locks, lock_wait
from categories_classification.prediction.files import LocalFiles
from categories_classification.prediction.output import (
    Placement,
    claim_staging,
    owner_gone,
    owner_record,
    placement,
    recover_interrupted_swap,
    swap_in,
)

DATE = "2026-11-23"


def _place(prefix: Path) -> Placement:
    return placement("c1", DATE, str(prefix))


def _folder(path: str, files: dict[str, bytes]) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (Path(path) / name).write_bytes(content)


def _staged(place: Placement, token: str, files: dict[str, bytes], owner: dict | None = None) -> None:
    """A staging folder of ``token`` with its owner record (this process unless ``owner``)."""
    _folder(place.staging(token), files)
    Path(place.owner(token)).write_text(json.dumps(owner or owner_record()), encoding="utf-8")


def _contents(path: str) -> dict[str, bytes]:
    return {item.name: item.read_bytes() for item in sorted(Path(path).iterdir())}


def _manifest(place: Placement) -> dict:
    return json.loads(Path(place.manifest).read_text(encoding="utf-8"))


def _work(place: Placement) -> list[str]:
    return sorted(item.name for item in Path(place.work).iterdir()) if Path(place.work).exists() else []


def _with_first_output(tmp_path: Path) -> Placement:
    """A place whose date already holds run 1's output ("old") and manifest."""
    place = _place(tmp_path)
    _staged(place, "t1", {"part-0.parquet": b"old"})
    swap_in(LocalFiles(), place, "t1", {"run": 1})
    return place


def test_the_layout_keeps_staging_and_manifests_out_of_the_dataset(tmp_path):
    place = _place(tmp_path)
    assert place.target == f"{tmp_path}/products_categories/client_id=c1/date={DATE}"
    assert place.manifest == f"{tmp_path}/_manifests/client_id=c1/date={DATE}.json"
    assert place.staging("t0") == f"{tmp_path}/_staging/client_id=c1/date={DATE}-t0"
    assert place.staging_root == f"{tmp_path}/_staging"


def test_only_parquet_files_are_swapped_in_and_the_manifest_lands_beside_the_dataset(tmp_path):
    place = _place(tmp_path)
    _staged(place, "t1", {"part-0.parquet": b"new", ".part-0.parquet.crc": b"crc", "_SUCCESS": b""})
    swap_in(LocalFiles(), place, "t1", {"run": 1})
    assert _contents(place.target) == {"part-0.parquet": b"new"}
    assert _manifest(place) == {"run": 1}
    assert not _work(place)


def test_a_rerun_replaces_data_and_manifest(tmp_path):
    place = _place(tmp_path)
    _staged(place, "t1", {"part-0.parquet": b"old", "part-1.parquet": b"old"})
    swap_in(LocalFiles(), place, "t1", {"run": 1})
    _staged(place, "t2", {"part-0.parquet": b"new"})
    swap_in(LocalFiles(), place, "t2", {"run": 2})
    assert _contents(place.target) == {"part-0.parquet": b"new"}
    assert _manifest(place) == {"run": 2}
    assert not _work(place)


def test_a_failed_move_keeps_the_previous_output_and_manifest(tmp_path):
    place = _with_first_output(tmp_path)
    _staged(place, "t2", {"part-0.parquet": b"new"})
    _folder(place.previous("t2"), {"junk": b"x"})  # the output cannot be moved aside: the new one cannot go in
    with pytest.raises(InfrastructureError, match=r"output .*date=2026-11-23: could not move the new output"):
        swap_in(LocalFiles(), place, "t2", {"run": 2})
    assert _contents(place.target) == {"part-0.parquet": b"old"}
    assert _manifest(place) == {"run": 1}


def test_a_staging_folder_removed_before_the_swap_is_not_recreated(tmp_path):
    place = _with_first_output(tmp_path)
    _staged(place, "t2", {"part-0.parquet": b"new"})
    LocalFiles().delete(place.staging("t2"))  # e.g. by another run's recovery
    with pytest.raises(InfrastructureError, match=r"staging folder .*date=2026-11-23-t2 is gone; nothing written"):
        swap_in(LocalFiles(), place, "t2", {"run": 2})
    assert _contents(place.target) == {"part-0.parquet": b"old"}
    assert _manifest(place) == {"run": 1}
    assert _work(place) == [f"date={DATE}-t2.owner"]  # no staging folder, no staged manifest came back


def test_another_process_s_staging_folder_is_never_swapped_in(tmp_path):
    place = _with_first_output(tmp_path)
    _staged(place, "t2", {"part-0.parquet": b"theirs"}, owner={**owner_record(), "pid": os.getppid()})
    with pytest.raises(InfrastructureError, match=r"belongs to another process"):
        swap_in(LocalFiles(), place, "t2", {"run": 2})
    assert _contents(place.target) == {"part-0.parquet": b"old"}


def test_write_text_never_creates_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        LocalFiles().write_text(str(tmp_path / "gone" / "x.json"), "{}")
    assert not (tmp_path / "gone").exists()


def test_killed_between_the_two_renames_the_old_output_comes_back(tmp_path):
    place = _with_first_output(tmp_path)
    Path(place.target).rename(place.previous("t2"))
    _folder(place.staging("t2"), {"part-0.parquet": b"new"})
    Path(place.staged_manifest("t2")).write_text('{"run": 2}', encoding="utf-8")
    recover_interrupted_swap(LocalFiles(), place)
    assert _contents(place.target) == {"part-0.parquet": b"old"}
    assert _manifest(place) == {"run": 1}
    assert not _work(place)


def test_killed_after_the_data_went_in_its_manifest_follows(tmp_path):
    place = _with_first_output(tmp_path)
    Path(place.target).rename(place.previous("t2"))
    _folder(place.target, {"part-0.parquet": b"new"})
    Path(place.staged_manifest("t2")).write_text('{"run": 2}', encoding="utf-8")
    recover_interrupted_swap(LocalFiles(), place)
    assert _contents(place.target) == {"part-0.parquet": b"new"}
    assert _manifest(place) == {"run": 2}
    assert not _work(place)


def test_leftovers_of_earlier_versions_inside_the_dataset_are_recovered(tmp_path):
    place = _place(tmp_path)
    client = Path(place.target).parent
    _folder(str(client / f"_previous-date={DATE}-t0"), {"part-0.parquet": b"old", "_manifest.json": b"{}"})
    _folder(str(client / f"_staging-date={DATE}-t1"), {"part-0.parquet": b"half written"})
    recover_interrupted_swap(LocalFiles(), place)
    assert sorted(item.name for item in client.iterdir()) == [f"date={DATE}"]
    assert _contents(place.target)["part-0.parquet"] == b"old"


def _dead_pid() -> int:
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                             check=True)
    return int(process.stdout)


@pytest.fixture(name="live_process")
def _live_process():
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as process:
        yield process
        process.kill()


def test_a_dead_owner_s_staging_is_removed_and_a_live_owner_s_kept(tmp_path, live_process):
    place = _with_first_output(tmp_path)
    record = owner_record()
    _staged(place, "dead", {"part-0.parquet": b"half"}, owner={**record, "pid": _dead_pid()})
    _staged(place, "live", {"part-0.parquet": b"being written"}, owner={**record, "pid": live_process.pid})
    Path(place.staged_manifest("live")).write_text('{"run": "live"}', encoding="utf-8")
    recover_interrupted_swap(LocalFiles(), place)
    assert _work(place) == [f"date={DATE}-live", f"date={DATE}-live.json", f"date={DATE}-live.owner"]
    assert _contents(place.target) == {"part-0.parquet": b"old"}
    assert _manifest(place) == {"run": 1}


def test_a_live_owner_s_half_done_swap_is_left_to_it(tmp_path, live_process):
    place = _with_first_output(tmp_path)
    Path(place.target).rename(place.previous("t2"))  # the live run is between its two renames
    _staged(place, "t2", {"part-0.parquet": b"new"}, owner={**owner_record(), "pid": live_process.pid})
    recover_interrupted_swap(LocalFiles(), place)
    assert not Path(place.target).exists()
    assert _contents(place.previous("t2")) == {"part-0.parquet": b"old"}


def test_when_an_owner_is_gone():
    host, now = socket.gethostname(), time.time()

    def alive(_pid: int) -> float:
        return now - 100  # started before its record

    def record(**fields) -> str:
        return json.dumps({"host": host, "pid": 42, "created": now - 10, **fields})

    assert owner_gone(record(), now, host, alive) is None
    assert "is gone" in owner_gone(record(), now, host, lambda pid: None)
    assert "newer process" in owner_gone(record(), now, host, lambda pid: now)  # its pid was reused
    assert owner_gone(record(host="elsewhere"), now, host, alive) is None  # cannot be checked: kept a day
    assert "over the 24 h limit" in owner_gone(record(host="elsewhere", created=now - 90_000), now, host, alive)
    assert owner_gone(None) == "no owner record" and owner_gone("{") == "unreadable owner record"


@dataclass(frozen=True)
class _Plan:
    client_id: str
    place: Placement


_HOLDER = """\
import sys, time
from categories_classification.prediction.date_lock import date_locks
from categories_classification.prediction.files import LocalFiles
from categories_classification.prediction.output import placement
from tests.unit.prediction.test_output import _Plan
plan = _Plan(sys.argv[1], placement(sys.argv[1], sys.argv[2], sys.argv[3]))
with date_locks(LocalFiles(), [plan], {}, wait=0) as held:
    assert held
    print("held", flush=True)
    time.sleep(float(sys.argv[4]))
"""


@contextmanager
def _holder(client_id: str, prefix: Path, hold: float) -> Iterator[subprocess.Popen]:
    """Another process holding ``client_id``'s lock of DATE for ``hold`` seconds (killed on leaving)."""
    with subprocess.Popen([sys.executable, "-c", _HOLDER, client_id, DATE, str(prefix), str(hold)],
                          stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[3]) as process:
        assert process.stdout.readline().strip() == "held"
        yield process
        process.kill()


def test_a_date_held_by_another_run_fails_that_client_alone_on_one_line(tmp_path):
    with _holder("c1", tmp_path, 30) as holder:
        plans = [_Plan("c1", placement("c1", DATE, str(tmp_path))), _Plan("c2", placement("c2", DATE, str(tmp_path)))]
        refused: dict[str, Exception] = {}
        started = time.monotonic()
        with date_locks(LocalFiles(), plans, refused, wait=1.0) as held:
            assert [plan.client_id for plan in held] == ["c2"]
        assert 1.0 <= time.monotonic() - started < 5
        assert isinstance(refused["c1"], ConcurrentRunError)
        assert str(refused["c1"]) == (
            f"client 'c1': another prediction of {DATE} is running (pid {holder.pid} on host {socket.gethostname()} "
            f"since {str(refused['c1']).split(' since ')[1].split(')')[0]}); waited 1 s for it "
            f"(CATEGORIES_PREDICTION_LOCK_WAIT); nothing written, the output of {DATE} is left to that run")
        assert not Path(plans[1].place.lock).exists()  # released and removed


def test_a_second_run_waits_for_the_first_then_proceeds(tmp_path):
    plan = _Plan("c1", placement("c1", DATE, str(tmp_path)))
    with _holder("c1", tmp_path, 2) as holder:
        started = time.monotonic()
        with date_locks(LocalFiles(), [plan], {}, wait=30) as held:
            assert held == [plan]
            assert json.loads(Path(plan.place.lock).read_text(encoding="utf-8"))["pid"] == os.getpid()
        assert 1.0 < time.monotonic() - started < 10 and holder.wait(timeout=10) == 0
    assert not Path(plan.place.lock).exists()


def test_leaving_the_lock_removes_what_this_run_staged_and_did_not_swap_in(tmp_path):
    place = _with_first_output(tmp_path)
    with date_locks(LocalFiles(), [_Plan("c1", place)], {}, wait=0):
        token = claim_staging(LocalFiles(), [place])
        _folder(place.staging(token), {"part-0.parquet": b"failed checks"})
    assert not _work(place)
    assert _contents(place.target) == {"part-0.parquet": b"old"}


def test_the_wait_is_settable_and_checked(monkeypatch):
    monkeypatch.delenv("CATEGORIES_PREDICTION_LOCK_WAIT", raising=False)
    assert lock_wait() == 600
    monkeypatch.setenv("CATEGORIES_PREDICTION_LOCK_WAIT", "0")
    assert lock_wait() == 0
    monkeypatch.setenv("CATEGORIES_PREDICTION_LOCK_WAIT", "soon")
    with pytest.raises(ConfigError, match=r"CATEGORIES_PREDICTION_LOCK_WAIT: expected a number of seconds >= 0.*'soon'"):
        lock_wait()
