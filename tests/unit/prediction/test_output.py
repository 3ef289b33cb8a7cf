"""The atomic swap and the recovery after a killed run, on this machine's file system (no Spark needed)."""
import json
from pathlib import Path

import pytest

from categories_classification.errors import InfrastructureError
from categories_classification.prediction.output import LocalFiles, Placement, placement, recover_interrupted_swap, swap_in

DATE = "2026-11-23"


def _place(prefix: Path) -> Placement:
    return placement("c1", DATE, str(prefix))


def _folder(path: str, files: dict[str, bytes]) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (Path(path) / name).write_bytes(content)


def _contents(path: str) -> dict[str, bytes]:
    return {item.name: item.read_bytes() for item in sorted(Path(path).iterdir())}


def _manifest(place: Placement) -> dict:
    return json.loads(Path(place.manifest).read_text(encoding="utf-8"))


def _work(place: Placement) -> list[str]:
    return sorted(item.name for item in Path(place.work).iterdir()) if Path(place.work).exists() else []


def _with_first_output(tmp_path: Path) -> Placement:
    """A place whose date already holds run 1's output ("old") and manifest."""
    place = _place(tmp_path)
    _folder(place.staging("t1"), {"part-0.parquet": b"old"})
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
    _folder(place.staging("t1"), {"part-0.parquet": b"new", ".part-0.parquet.crc": b"crc", "_SUCCESS": b""})
    swap_in(LocalFiles(), place, "t1", {"run": 1})
    assert _contents(place.target) == {"part-0.parquet": b"new"}
    assert _manifest(place) == {"run": 1}
    assert not _work(place)


def test_a_rerun_replaces_data_and_manifest(tmp_path):
    place = _place(tmp_path)
    _folder(place.staging("t1"), {"part-0.parquet": b"old", "part-1.parquet": b"old"})
    swap_in(LocalFiles(), place, "t1", {"run": 1})
    _folder(place.staging("t2"), {"part-0.parquet": b"new"})
    swap_in(LocalFiles(), place, "t2", {"run": 2})
    assert _contents(place.target) == {"part-0.parquet": b"new"}
    assert _manifest(place) == {"run": 2}
    assert not _work(place)


def test_a_failed_move_keeps_the_previous_output_and_manifest(tmp_path):
    place = _with_first_output(tmp_path)
    with pytest.raises(InfrastructureError, match=r"output .*date=2026-11-23: could not move the new output"):
        swap_in(LocalFiles(), place, "t2", {"run": 2})  # nothing was staged under t2
    assert _contents(place.target) == {"part-0.parquet": b"old"}
    assert _manifest(place) == {"run": 1}
    assert not _work(place)


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
