"""DATA_PREFIX layout and date normalisation."""
import pytest

from categories_classification.errors import ConfigError
from categories_classification.paths import (
    data_prefix, manifest_of, manifest_path, normalize_date, output_path, predict_path, staging_root, train_path)


def test_default_prefix_is_data(monkeypatch):
    monkeypatch.delenv("DATA_PREFIX", raising=False)
    assert train_path("c1") == "./data/train/client_id=c1/data_train.csv.gz"


def test_prefix_from_environment(monkeypatch):
    monkeypatch.setenv("DATA_PREFIX", "/srv/data/")
    assert data_prefix() == "/srv/data"
    assert predict_path("c1") == "/srv/data/prediction/client_id=c1/data_predict.csv.gz"


def test_uri_prefix_is_kept_intact():
    assert output_path("c1", "2026-11-23", "s3a://bucket/root") == (
        "s3a://bucket/root/products_categories/client_id=c1/date=2026-11-23"
    )


def test_manifests_and_staging_live_beside_the_dataset():
    assert manifest_path("c1", "2026-11-23", "s3a://bucket/root/") == (
        "s3a://bucket/root/_manifests/client_id=c1/date=2026-11-23.json")
    assert staging_root("/srv/data") == "/srv/data/_staging"
    assert manifest_of("data/products_categories/client_id=c1/date=2026-11-23/") == (
        "data/_manifests/client_id=c1/date=2026-11-23.json")


@pytest.mark.parametrize("value, expected", [
    ("2026-11-23", "2026-11-23"),
    ("2026-11-23T00:00:00+00:00", "2026-11-23"),
    ("2026-11-23T10:15:00Z", "2026-11-23"),
])
def test_dates_and_airflow_timestamps_become_a_date(value, expected):
    assert normalize_date(value) == expected


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01", "", "2026-11-23; rm -rf /"])
def test_bad_dates_are_rejected_naming_the_option(value):
    with pytest.raises(ConfigError, match="--inference_date: expected an ISO date"):
        normalize_date(value, client_id="c1")
