"""The size budget and the pinned model family as settings: config key, trainer option, DAG command."""
from pathlib import Path

import pytest

from categories_classification.config import load_config, validate_max_model_mb
from categories_classification.errors import ConfigError
from categories_classification_cli import main
from scripts.generate_dags import KINDS, bash_command


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "clients.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_max_model_mb_is_optional_and_typed(tmp_path):
    config = load_config(_write(tmp_path, "a:\n  features: [x]\n  max_model_mb: 20\nb:\n  features: [x]\n"))
    assert config.get("a").max_model_mb == 20.0 and isinstance(config.get("a").max_model_mb, float)
    assert config.get("b").max_model_mb is None
    assert validate_max_model_mb(2.5) == 2.5 and validate_max_model_mb(None) is None


@pytest.mark.parametrize("value, pattern", [
    ("0", r"greater than 0"),
    ("-3", r"greater than 0"),
    ("big", r"valid number, found 'big'"),
    ("true", r"valid number"),
    (".inf", r"finite number"),
])
def test_bad_max_model_mb_is_rejected_on_one_line(tmp_path, value, pattern):
    with pytest.raises(ConfigError, match=rf"client 'a': .*key 'max_model_mb': .*{pattern}") as info:
        load_config(_write(tmp_path, f"a:\n  features: [x]\n  max_model_mb: {value}\n"))
    assert "\n" not in str(info.value)


def test_unknown_key_message_lists_max_model_mb(tmp_path):
    with pytest.raises(ConfigError, match="'features', 'family', 'params'.*'promotion_tolerance' and 'max_model_mb'"):
        load_config(_write(tmp_path, "a:\n  features: [x]\n  max_size: 3\n"))


def test_the_training_dag_passes_the_budget_only_when_configured(tmp_path):
    config = load_config(_write(tmp_path, "a:\n  features: [x]\n  max_model_mb: 12.5\nb:\n  features: [x]\n"))
    training = next(kind for kind in KINDS if kind.name == "training")
    assert "--max_model_mb=12.5 --training_date=" in bash_command(config.get("a"), training)
    assert "--max_model_mb" not in bash_command(config.get("b"), training)


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_bad_trainer_budget_option(capsys, value):
    code = main(["trainer", "--client_id=c1", "--features=[\"f0\"]", "--model_params={}", "--training_date=2026-11-23",
                 f"--max_model_mb={value}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("Error: ") and "--max_model_mb" in err and err.count("\n") == 1


def test_a_family_key_pins_the_family_and_its_params_are_that_familys(tmp_path):
    config = load_config(_write(tmp_path, "a:\n  features: [x]\n  family: hist_gradient_boosting\n"
                                          "  params: {max_iter: 50}\nb:\n  features: [x]\n  params: {n_estimators: 5}\n"))
    assert config.get("a").family == "hist_gradient_boosting" and config.get("a").params == {"max_iter": 50}
    assert config.get("b").family is None  # params only: RandomForest params, family chosen per client


def test_every_new_family_and_ensembles_can_be_pinned_with_their_own_params(tmp_path):
    config = load_config(_write(tmp_path, "a:\n  features: [x]\n  family: mlp\n  params: {hidden_layer_sizes: [64]}\n"
                                          "b:\n  features: [x]\n  family: [mlp, qda]\n  params: {qda: {reg_param: 0.1}}\n"
                                          "c:\n  features: [x]\n  family: ensemble\nd:\n  features: [x]\n  family: knn\n"
                                          "e:\n  features: [x]\n  family: logistic\n  params: {C: 0.5}\n"))
    assert config.get("a").params == {"hidden_layer_sizes": [64]}
    assert config.get("b").family == "mlp+qda" and config.get("b").params == {"qda": {"reg_param": 0.1}}
    assert [config.get(name).family for name in "cde"] == ["ensemble", "knn", "logistic"]


@pytest.mark.parametrize("text, pattern", [
    ("  family: xgboost\n", r"key 'family': unknown model family: expected one of random_forest, extra_trees, "
                            r"hist_gradient_boosting, mlp, knn, qda, logistic, 'ensemble' or a list of two or more "
                            r"of those families, found 'xgboost'"),
    ("  family: [extra_trees]\n", r"key 'family': unknown model family: .*found \['extra_trees'\]"),
    ("  family: [mlp, mlp]\n", r"key 'family': unknown model family: .*found \['mlp', 'mlp'\]"),
    ("  family: [mlp, qda]\n  params: {knn: {n_neighbors: 3}}\n",
     r"key 'params': an ensemble's params are keyed by member family: expected some of mlp, qda, found 'knn'"),
    ("  family: ensemble\n  params: {mlp: {hidden: 3}}\n", r"key 'params': unknown MLPClassifier parameter\(s\) 'hidden'"),
    ("  family: hist_gradient_boosting\n  params: {n_estimators: 5}\n",
     r"key 'params': unknown HistGradientBoostingClassifier parameter\(s\) 'n_estimators'"),
    ("  params: {max_iter: 5}\n", r"key 'params': unknown RandomForestClassifier parameter\(s\) 'max_iter'"),
])
def test_bad_family_or_params_for_it_are_rejected_on_one_line(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=rf"client 'a': .*{pattern}") as info:
        load_config(_write(tmp_path, f"a:\n  features: [x]\n{text}"))
    assert "\n" not in str(info.value)


def test_the_training_dag_passes_a_pinned_family_only_when_configured(tmp_path):
    config = load_config(_write(tmp_path, "a:\n  features: [x]\n  family: extra_trees\nb:\n  features: [x]\n"
                                          "c:\n  features: [x]\n  family: [mlp, qda]\n"))
    training = next(kind for kind in KINDS if kind.name == "training")
    assert "--model_family=extra_trees" in bash_command(config.get("a"), training)
    assert "--model_family" not in bash_command(config.get("b"), training)
    assert "--model_family=mlp+qda" in bash_command(config.get("c"), training)  # what the trainer's option reads


def test_bad_trainer_family_option(capsys):
    code = main(["trainer", "--client_id=c1", "--features=[\"f0\"]", "--model_params={}", "--training_date=2026-11-23",
                 "--model_family=xgboost"])
    err = capsys.readouterr().err
    assert code == 2 and "--model_family" in err
