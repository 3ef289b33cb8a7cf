"""What a fleet prediction asks of MLflow before its Spark job: the champions in a few registry searches,
the model files from a cache keyed by their registered digest (real SQLite store, real trainings)."""
import hashlib
import math
import os
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from categories_classification import drift, scratch
from categories_classification.errors import InfrastructureError
from categories_classification.prediction import model_cache
from categories_classification.prediction.model_cache import cached_model
from categories_classification.records import CHAMPION
from categories_classification.tracking import registry
from categories_classification.tracking.registry import ModelRef, champions, resolve_model
from categories_classification.training.trainer import train_model
from scripts.generate_example_data import ClientSpec
from tests.helpers import FEATURES, write_and_train

pytestmark = pytest.mark.slow
SPECS = tuple(ClientSpec(f"cache_{name}", 600 + i, n_train=300, n_predict=50, n_categories=4)
              for i, name in enumerate("abcde"))
IDS = [spec.client_id for spec in SPECS]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, module_tracking_store: Path) -> Path:  # pylint: disable=unused-argument
    """Five clients trained once, cache_b twice (its champion: whichever the gate kept); cache_e's alias removed."""
    prefix = write_and_train(SPECS, tmp_path_factory.mktemp("model_cache"), n_estimators=5)
    train_model("cache_b", FEATURES, {"n_estimators": 6}, "2026-11-24", data_prefix=str(prefix))
    MlflowClient().delete_registered_model_alias("cache_e_model", CHAMPION)
    return prefix


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(model_cache.CACHE_ENV, str(folder))
    return folder


def test_the_fleets_champions_are_those_each_client_resolves(fleet):  # pylint: disable=unused-argument
    found = champions([*IDS, "cache_never_trained"])
    assert sorted(found) == ["cache_a", "cache_b", "cache_c", "cache_d"]  # cache_e: no champion; never trained
    for client_id, ref in found.items():
        assert ref == resolve_model(client_id)
        assert ref.digest and ref.companion_digests  # what the cache and the drift check need, with no extra call


def test_the_champions_take_a_few_searches_not_one_per_client(fleet, monkeypatch):  # pylint: disable=unused-argument
    MlflowClient().set_registered_model_alias("cache_b_model", CHAMPION, "2")  # two champion version numbers
    calls = {"search_registered_models": 0, "search_model_versions": 0, "get_model_version_by_alias": 0}
    for name in calls:
        original = getattr(MlflowClient, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(MlflowClient, name, counted)
    monkeypatch.setattr(registry, "NAMES_PER_SEARCH", 2)

    found = champions(IDS)

    assert found["cache_b"].version == 2 and found["cache_a"].version == 1
    # 5 names in searches of 2; versions: 3 champions at version 1 (2 searches), 1 at version 2 (1 search).
    assert calls == {"search_registered_models": math.ceil(len(IDS) / 2), "search_model_versions": 3,
                     "get_model_version_by_alias": 0}


def _counting_fetch(monkeypatch: pytest.MonkeyPatch) -> list[ModelRef]:
    fetched: list[ModelRef] = []
    original = model_cache.fetch_model_and_companion

    def fetch(ref, companion):
        fetched.append(ref)
        return original(ref, companion)

    monkeypatch.setattr(model_cache, "fetch_model_and_companion", fetch)
    return fetched


def test_a_version_is_downloaded_once_then_read_from_the_cache(fleet, cache, monkeypatch):  # pylint: disable=unused-argument
    ref = resolve_model("cache_a")
    fetched = _counting_fetch(monkeypatch)
    first = cached_model(ref, drift.REFERENCE_FILE)
    second = cached_model(ref, drift.REFERENCE_FILE)
    assert fetched == [ref]
    assert second == first and first.path.parent == cache
    assert hashlib.sha256(first.path.read_bytes()).hexdigest() == ref.digest
    assert first.features == tuple(FEATURES) and first.reference is not None


@pytest.mark.parametrize("damage", ["model file changed", "model file gone", "meta file damaged"])
def test_a_damaged_cache_entry_is_downloaded_again(fleet, cache, monkeypatch, damage):  # pylint: disable=unused-argument
    ref = resolve_model("cache_d")
    entry = cached_model(ref, drift.REFERENCE_FILE)
    if damage == "model file changed":
        entry.path.write_bytes(entry.path.read_bytes()[:-10] + b"0123456789")
    elif damage == "model file gone":
        entry.path.unlink()
    else:
        entry.path.with_suffix(model_cache.META_SUFFIX).write_text("{not json", encoding="utf-8")
    fetched = _counting_fetch(monkeypatch)
    again = cached_model(ref, drift.REFERENCE_FILE)
    assert fetched == [ref] and again == entry
    assert hashlib.sha256(again.path.read_bytes()).hexdigest() == ref.digest


def test_a_version_without_a_digest_is_downloaded_every_time(fleet, cache, monkeypatch):  # pylint: disable=unused-argument
    ref = resolve_model("cache_a")
    unchecked = ModelRef(ref.client_id, ref.name, ref.version, ref.run_id, "", ref.companion_digests)
    fetched = _counting_fetch(monkeypatch)
    cached_model(unchecked, drift.REFERENCE_FILE)
    cached_model(unchecked, drift.REFERENCE_FILE)
    assert len(fetched) == 2


def test_entries_unused_for_a_week_are_removed_and_used_ones_kept(fleet, cache):  # pylint: disable=unused-argument
    used = cached_model(resolve_model("cache_a"), drift.REFERENCE_FILE)
    stale = [cache / "old_model-v1-0123456789abcdef.skops", cache / "old_model-v1-0123456789abcdef.json",
             cache / ".old_model-v2-fedcba9876543210.skops.1a2b3c4d"]  # a killed process's staging file
    long_ago = time.time() - scratch.MAX_AGE_SECONDS - 60
    for path in [*stale, used.path, used.path.with_suffix(model_cache.META_SUFFIX)]:
        path.touch()
        os.utime(path, (long_ago, long_ago))
    assert cached_model(resolve_model("cache_a"), drift.REFERENCE_FILE) == used  # a hit: used again
    cached_model(resolve_model("cache_d"), drift.REFERENCE_FILE)  # a download: prunes
    assert not [path for path in stale if path.exists()]
    assert used.path.exists() and used.path.with_suffix(model_cache.META_SUFFIX).exists()


def test_a_cache_that_cannot_be_written_is_the_clients_one_line_error(fleet, tmp_path, monkeypatch):  # pylint: disable=unused-argument
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder should be", encoding="utf-8")
    monkeypatch.setenv(model_cache.CACHE_ENV, str(not_a_folder))
    with pytest.raises(InfrastructureError) as raised:
        cached_model(resolve_model("cache_a"), drift.REFERENCE_FILE)
    assert raised.value.client_id == "cache_a" and "\n" not in str(raised.value)
    assert f"cannot keep its file in the model cache {not_a_folder} (EEXIST" in str(raised.value)
    assert f"expected a writable folder (${model_cache.CACHE_ENV})" in str(raised.value)
