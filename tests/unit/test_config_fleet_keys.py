"""The fleet view's per-client config keys: max_model_age_days and drift_threshold."""
import re

import pytest

from categories_classification.config import DEFAULT_DRIFT_THRESHOLD, DEFAULT_MAX_MODEL_AGE_DAYS, load_config
from categories_classification.errors import ConfigError


def _load(tmp_path, entry: str):
    path = tmp_path / "clients.yaml"
    path.write_text(f"a:\n  features: [f0]\n{entry}", encoding="utf-8")
    return load_config(path).get("a")


def test_defaults_apply_when_the_keys_are_absent(tmp_path):
    client = _load(tmp_path, "")
    assert (client.max_model_age_days, client.drift_threshold) == (DEFAULT_MAX_MODEL_AGE_DAYS, DEFAULT_DRIFT_THRESHOLD)
    assert (DEFAULT_MAX_MODEL_AGE_DAYS, DEFAULT_DRIFT_THRESHOLD) == (45, 0.2)


def test_the_keys_are_read(tmp_path):
    client = _load(tmp_path, "  max_model_age_days: 7\n  drift_threshold: 0.35\n")
    assert (client.max_model_age_days, client.drift_threshold) == (7, 0.35)


@pytest.mark.parametrize(("entry", "pattern"), [
    ("  max_model_age_days: 0\n", r"key 'max_model_age_days': .*greater than 0, found 0"),
    ("  max_model_age_days: 4.5\n", r"key 'max_model_age_days': .*integer.*found 4.5"),
    ("  max_model_age_days: '30'\n", r"key 'max_model_age_days': .*integer.*found '30'"),
    ("  drift_threshold: 0\n", r"key 'drift_threshold': .*greater than 0, found 0"),
    ("  drift_threshold: .nan\n", r"key 'drift_threshold': .*found nan"),
    ("  drift_threshold: high\n", r"key 'drift_threshold': .*number.*found 'high'"),
    ("  max_age_days: 3\n", r"key 'max_age_days': unknown key: expected only .*'max_model_age_days', 'drift_threshold'"),
])
def test_bad_values_name_the_key_what_was_expected_and_found(tmp_path, entry, pattern):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, entry)
    message = str(info.value)
    assert message.startswith("client 'a': config file ") and len(message.splitlines()) == 1
    assert re.search(pattern, message), message
