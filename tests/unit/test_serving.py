"""The served model's rows: the batch's top-k per product, the k parameter, and the digest check at load."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.models import Model
from sklearn.ensemble import RandomForestClassifier

from categories_classification.calibrated import TemperatureScaledClassifier
from categories_classification.tracking.flavor import serving_signature
from categories_classification.serialization import DIGEST_TAG, dump_model, sha256_hex
from categories_classification.serving import CLIENT_KEY, TopKCategories, _load_pyfunc
from categories_classification.training.fitting import fit_model
from tests.helpers import exploded, ranked

FEATURES = ["f0", "f1", "f2"]


def _model() -> TemperatureScaledClassifier:
    """A calibrated forest fitted on named columns, as training registers it."""
    rng = np.random.default_rng(0)
    forest = RandomForestClassifier(n_estimators=3, random_state=0)
    return TemperatureScaledClassifier(forest.fit(pd.DataFrame(rng.random((60, 3)), columns=FEATURES),
                                                  rng.choice(["a", "b", "c"], 60)), temperature=1.7)


def _products(rows: int = 6) -> pd.DataFrame:
    values = np.random.default_rng(2).random((rows, len(FEATURES)))
    return pd.DataFrame(values, columns=FEATURES).assign(product_id=[f"p{i}" for i in range(rows)])


def test_each_product_gets_the_batch_top_k_and_keeps_its_id():
    model, products = _model(), _products()
    served = TopKCategories(model, FEATURES).predict(products)
    assert list(served.columns) == ["product_id", "pred_label", "pred_score", "rank"] and len(served) == len(products)
    batch = ranked(products["product_id"], model.predict_proba(products[FEATURES]), model.classes_)
    pd.testing.assert_frame_equal(exploded(served), batch.sort_values(["product_id", "rank"]).reset_index(drop=True),
                                  check_exact=True)


def test_k_is_a_request_parameter_and_must_be_positive():
    served = TopKCategories(_model(), FEATURES).predict(_products(2), params={"k": 2})
    assert served["rank"].tolist() == [[0, 1], [0, 1]]
    with pytest.raises(ValueError, match="parameter 'k': expected a whole number of categories of at least 1, found 0"):
        TopKCategories(_model(), FEATURES).predict(_products(2), params={"k": 0})


def test_a_product_with_a_missing_feature_gets_no_categories_and_ids_are_optional():
    products = _products(3).drop(columns="product_id")
    products.loc[1, "f2"] = np.nan
    served = TopKCategories(_model(), FEATURES).predict(products)
    assert served["product_id"].tolist() == [None, None, None]
    assert [len(labels) for labels in served["pred_label"]] == [3, 0, 3]  # 3 categories: fewer than k


def test_a_product_alone_gets_the_scores_it_gets_among_others():
    # A smooth family: numpy computes a lone row's matrix product another way (see row_stable_proba).
    rng = np.random.default_rng(0)
    columns = [f"g{i}" for i in range(5)]
    x = pd.DataFrame(rng.normal(size=(2000, 5)), columns=columns)
    model = fit_model(x, rng.choice([f"c{i}" for i in range(12)], 2000), family="logistic").model
    products = pd.DataFrame(rng.normal(size=(300, 5)), columns=columns).assign(product_id=[f"p{i}" for i in range(300)])
    served = TopKCategories(model, columns)
    alone = pd.concat([served.predict(products.iloc[[i]]) for i in range(len(products))])
    pd.testing.assert_frame_equal(exploded(alone), exploded(served.predict(products)), check_exact=True)


def _saved(folder: Path, digest: str) -> Path:
    """A model folder as the registry writes it: the skops file and the MLmodel naming its digest."""
    data = dump_model(_model())
    (folder / "model.skops").write_bytes(data)
    meta = Model(signature=serving_signature(FEATURES))
    meta.add_flavor("python_function", loader_module="categories_classification.serving", data="model.skops",
                    **{DIGEST_TAG: digest or sha256_hex(data), CLIENT_KEY: "client_0"})
    meta.save(str(folder / "MLmodel"))
    return folder / "model.skops"


def test_the_loader_checks_the_digest_and_reads_the_features_from_the_signature(tmp_path):
    loaded = _load_pyfunc(str(_saved(tmp_path, "")))
    assert loaded.features == FEATURES and loaded.labels.tolist() == ["a", "b", "c"]


def test_a_file_that_does_not_match_its_digest_is_refused_on_one_line(tmp_path):
    model_file = _saved(tmp_path, "0" * 64)
    with pytest.raises(ValueError) as refused:
        _load_pyfunc(str(model_file))
    message = str(refused.value)
    assert message.startswith(f"client 'client_0': model file {model_file} does not match its digest "
                              f"(expected {DIGEST_TAG} {'0' * 64}, found ")
    assert message.endswith("refusing to load it") and "\n" not in message
