"""Clients config: structure, safe names, RandomForest parameters, one-line errors."""
from pathlib import Path

import pytest

from categories_classification.config import (
    load_config,
    validate_client_id,
    validate_features,
    validate_model_params,
)
from categories_classification.errors import ConfigError

REPO_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "clients_config.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "clients.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_committed_config_lists_the_ten_example_clients():
    config = load_config(REPO_CONFIG)
    assert [client.client_id for client in config] == [f"client_{i}" for i in range(10)]
    assert all(client.features == ("f0", "f1", "f2", "f3", "f4") for client in config)


def test_clients_iterate_sorted_with_typed_settings(tmp_path):
    config = load_config(_write(tmp_path, "b:\n  features: [x]\na:\n  features: [y, z]\n  params: {max_depth: 3}\n"))
    assert [client.client_id for client in config] == ["a", "b"]
    assert config.get("a").params == {"max_depth": 3}
    assert config.get("b").params == {}


def test_promotion_tolerance(tmp_path):
    config = load_config(_write(tmp_path, "a:\n  features: [x]\n  promotion_tolerance: 0.02\nb:\n  features: [x]\n"))
    assert config.get("a").promotion_tolerance == 0.02 and config.get("b").promotion_tolerance is None
    with pytest.raises(ConfigError, match=r"client 'a': .*key 'promotion_tolerance'.*less than or equal to 1"):
        load_config(_write(tmp_path, "a:\n  features: [x]\n  promotion_tolerance: 5\n"))


def test_config_file_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CONFIG_FILE", str(_write(tmp_path, "only:\n  features: [f0]\n")))
    assert len(load_config()) == 1


@pytest.mark.parametrize("text, pattern", [
    ("c1:\n  features: []\n", r"client 'c1': .*key 'features'.*at least 1"),
    ("c1:\n  features: f0\n", r"client 'c1': .*key 'features'.*valid list"),
    ("c1:\n  params: {}\n", r"client 'c1': .*key 'features'.*required"),
    ("c1:\n  features: [f0]\n  params: {n_trees: 3}\n",
     r"client 'c1': .*key 'params'.*unknown RandomForestClassifier parameter.*'n_trees'"),
    ("c1:\n  features: [f0]\n  params: {n_estimators: many}\n", r"client 'c1': .*key 'params'.*n_estimators"),
    ("c1:\n  features: [f0]\n  feature: [f1]\n", r"client 'c1': .*key 'feature'.*unknown key"),
    ("c1:\n  features: [f0, f0]\n", r"client 'c1': .*distinct"),
    ("c1:\n  features: ['f0; rm -rf /']\n", r"client 'c1': .*not allowed"),
    ("'bad id':\n  features: [f0]\n", r"client id: expected letters, digits and '_'.*'bad id'"),
    ("'../etc':\n  features: [f0]\n", r"client id: expected .*'\.\./etc'"),
    ("c1:\n  features: [f0]\nc1:\n  features: [f1]\n", r"duplicate key 'c1' at line 3"),
    ("- c1\n", r"expected a mapping of client ids"),
    ("c1: [f0]\n", r"client 'c1': .*expected a mapping with 'features'"),
    ("c1:\n  features: [f0\n", r"not valid YAML"),
    ("c1: !!python/object/apply:os.system ['echo pwned']\n", r"not valid YAML"),
])
def test_bad_configs_are_rejected_on_one_line(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(_write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_client(tmp_path):
    config = load_config(_write(tmp_path, "c1:\n  features: [f0]\n"))
    with pytest.raises(ConfigError, match=r"client 'c9': not found in .*expected one of c1"):
        config.get("c9")


@pytest.mark.parametrize("client_id", ["client_0", "C7", "a_b_1"])
def test_safe_client_ids(client_id):
    assert validate_client_id(client_id) == client_id


@pytest.mark.parametrize("client_id", ["", "a-b", "a b", "a;b", "$(x)", "`x`", "a\nb", "a\n", "../x", 7, None])
def test_unsafe_client_ids(client_id):
    with pytest.raises(ConfigError, match="client id"):
        validate_client_id(client_id)


def test_cli_values_use_the_same_validation():
    assert validate_features(["f0", "f1"], "c1") == ["f0", "f1"]
    assert validate_model_params({"n_estimators": 10}, "c1") == {"n_estimators": 10}
    with pytest.raises(ConfigError, match=r"client 'c1': key 'params': unknown .*'depth'"):
        validate_model_params({"depth": 3}, "c1")
    with pytest.raises(ConfigError, match=r"client 'c1': key 'features'"):
        validate_features("f0", "c1")


def test_select_keeps_the_asked_clients_and_names_unknown_ones(tmp_path):
    config = load_config(_write(tmp_path, "c1:\n  features: [f0]\nc2:\n  features: [f1]\n"))
    assert [client.client_id for client in config.select(["c2"])] == ["c2"]
    assert config.select([]) is config
    with pytest.raises(ConfigError, match=r"client 'c3': not found in .*expected one of c1, c2"):
        config.select(["c1", "c3"])
