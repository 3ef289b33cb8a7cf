"""Training file reading and validation: each bad input gives one clear line."""
import gzip
from pathlib import Path

import pandas as pd
import pytest

from categories_classification.training.data import load_training_data
from categories_classification.errors import InputDataError

FEATURES = ["f0", "f1"]


def _gz(tmp_path: Path, text: str) -> str:
    path = tmp_path / "data_train.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(text)
    return str(path)


def _rows(n_per_class: int = 3, classes: str = "ab") -> str:
    lines = ["product_id,category_id,f0,f1"]
    for index in range(n_per_class * len(classes)):
        lines.append(f"p{index},{classes[index % len(classes)]},{index * 0.1},{index * 0.2}")
    return "\n".join(lines) + "\n"


def test_valid_file_gives_float_features_in_configured_order(tmp_path):
    data = load_training_data("c1", ["f1", "f0"], _gz(tmp_path, _rows()))
    assert list(data.features.columns) == ["f1", "f0"]
    assert (data.features.dtypes == "float64").all()
    assert sorted(data.labels.unique()) == ["a", "b"]


def _expect(tmp_path, text_or_path, pattern, features=None):
    path = text_or_path if isinstance(text_or_path, str) and text_or_path.endswith(".gz") else _gz(tmp_path, text_or_path)
    with pytest.raises(InputDataError, match=pattern) as info:
        load_training_data("c1", features or FEATURES, path)
    assert str(info.value).startswith("client 'c1': ") and "\n" not in str(info.value)


def test_missing_file(tmp_path):
    _expect(tmp_path, str(tmp_path / "absent.csv.gz"), r"absent.csv.gz: not found")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "data_train.csv.gz"
    path.write_bytes(b"")
    _expect(tmp_path, str(path), r"is empty \(0 bytes\)")


def test_not_gzip(tmp_path):
    path = tmp_path / "data_train.csv.gz"
    path.write_text("product_id,category_id\n", encoding="utf-8")
    _expect(tmp_path, str(path), r"not a valid gzip file")


def test_truncated_gzip(tmp_path):
    full = gzip.compress(_rows(200).encode())
    path = tmp_path / "data_train.csv.gz"
    path.write_bytes(full[: len(full) // 2])
    _expect(tmp_path, str(path), r"not a valid gzip file")


def test_empty_gzip(tmp_path):
    _expect(tmp_path, "", r"contains no CSV header")


def test_header_only(tmp_path):
    _expect(tmp_path, "product_id,category_id,f0,f1\n", r"header but no data rows")


def test_missing_feature_column(tmp_path):
    _expect(tmp_path, _rows(), r"missing column\(s\) 'f9': expected product_id, category_id, f0, f9", ["f0", "f9"])


def test_missing_category_column(tmp_path):
    _expect(tmp_path, "product_id,f0,f1\np1,1,2\n", r"missing column\(s\) 'category_id'")


def test_non_numeric_feature_names_value_and_line(tmp_path):
    text = _rows().replace("p2,a,0.2,0.4", "p2,a,abc,0.4")
    _expect(tmp_path, text, r"feature column 'f0' must be numeric, found 'abc' at line 4")


def test_nan_feature(tmp_path):
    text = _rows().replace("p1,b,0.1,0.2", "p1,b,,0.2")
    _expect(tmp_path, text, r"feature column 'f0' is empty or NaN at line 3")


def test_infinite_feature(tmp_path):
    text = _rows().replace("p1,b,0.1,0.2", "p1,b,0.1,inf")
    _expect(tmp_path, text, r"feature column 'f1' is infinite at line 3")


def test_missing_label(tmp_path):
    text = _rows().replace("p1,b,", "p1,,")
    _expect(tmp_path, text, r"column 'category_id' is empty at line 3")


def test_single_category(tmp_path):
    _expect(tmp_path, _rows(classes="a"), r"single category 'a': expected at least 2")


def test_category_with_one_row(tmp_path):
    text = _rows() + "p99,lonely,1.0,2.0\n"
    _expect(tmp_path, text, r"1 category has fewer than 2 rows.*'lonely' \(1 row\)")


def test_duplicate_product_ids_are_kept_as_training_rows(tmp_path):
    text = _rows() + "p0,a,0.5,0.5\n"
    data = load_training_data("c1", FEATURES, _gz(tmp_path, text))
    assert len(data.labels) == 7


def test_integer_features_are_accepted(tmp_path):
    frame = pd.DataFrame({"product_id": list("pqrs"), "category_id": list("abab"), "f0": [1, 2, 3, 4], "f1": [4, 3, 2, 1]})
    path = tmp_path / "data_train.csv.gz"
    frame.to_csv(path, index=False)
    assert load_training_data("c1", FEATURES, str(path)).features["f0"].tolist() == [1.0, 2.0, 3.0, 4.0]
