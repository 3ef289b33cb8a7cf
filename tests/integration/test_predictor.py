"""predict_categories with a real local Spark session and a real SQLite MLflow store."""
import gzip
import re
import shutil

import pandas as pd
import pytest

from categories_classification.errors import InputDataError, ModelNotFoundError
from categories_classification.prediction.job import raise_on_duplicates
from categories_classification.prediction.predictor import predict_categories
from categories_classification.training.trainer import train_model
from tests.helpers import DATE, FEATURES, non_parquet_in_dataset, output_folder, staging_leftovers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(small_data, module_tracking_store):  # pylint: disable=unused-argument
    """small_a (12 categories) and small_b (3 categories) trained once for this module."""
    for client_id in ("small_a", "small_b"):
        train_model(client_id, FEATURES, {"n_estimators": 15}, DATE, data_prefix=str(small_data))
    return small_data


def _output(prefix, client_id, date=DATE):
    return pd.read_parquet(output_folder(prefix, client_id, date))


def test_five_ranked_rows_per_product(trained, spark):
    result = predict_categories("small_a", f"{DATE}T00:00:00+00:00", data_prefix=str(trained), spark=spark)
    output = _output(trained, "small_a")
    source = pd.read_csv(trained / "prediction/client_id=small_a/data_predict.csv.gz")
    assert list(output.columns) == ["product_id", "pred_label", "pred_score", "rank"]
    assert set(output["product_id"]) == set(source["product_id"])
    assert (output.groupby("product_id").size() == 5).all()
    assert len(output) == result.rows_written == 5 * len(source)
    assert (result.model_name, result.model_version, result.rows_skipped) == ("small_a_model", 1, 0)
    for _, group in output.sort_values(["product_id", "rank"]).groupby("product_id"):
        assert group["rank"].tolist() == [0, 1, 2, 3, 4]
        assert group["pred_score"].is_monotonic_decreasing
        assert group["pred_label"].is_unique
    assert output["pred_label"].str.startswith("c101_").all()


def test_fewer_categories_than_five(trained, spark):
    predict_categories("small_b", DATE, data_prefix=str(trained), spark=spark)
    output = _output(trained, "small_b")
    assert (output.groupby("product_id").size() == 3).all()
    assert sorted(output["rank"].unique()) == [0, 1, 2]


# A plain path is swapped through this machine's file system, a file: URI through Hadoop's (as s3a: or hdfs: are).
PREFIX_FORMS = {"path": "{}", "file-uri": "file:{}"}


@pytest.mark.parametrize("form", PREFIX_FORMS.values(), ids=PREFIX_FORMS.keys())
def test_rerun_replaces_the_output_whole(trained, spark, form):
    predict_categories("small_a", "2026-11-25", data_prefix=form.format(trained), spark=spark)
    folder = output_folder(trained, "small_a", "2026-11-25")
    (folder / "part-stale.parquet").write_bytes(b"left over from an older run")
    predict_categories("small_a", "2026-11-25", data_prefix=form.format(trained), spark=spark)
    assert not (folder / "part-stale.parquet").exists()
    assert len(_output(trained, "small_a", "2026-11-25")) == 5 * 400
    assert not [p.name for p in folder.parent.iterdir() if p.name.startswith("_")]
    assert not staging_leftovers(trained, "small_a") and not non_parquet_in_dataset(trained)


def test_rows_with_a_missing_feature_are_skipped_and_counted(trained, spark, tmp_path):
    prefix = tmp_path / "prefix"
    shutil.copytree(trained / "train", prefix / "train")
    source = pd.read_csv(trained / "prediction/client_id=small_a/data_predict.csv.gz")
    source.loc[[3, 7], "f2"] = None
    target = prefix / "prediction/client_id=small_a/data_predict.csv.gz"
    target.parent.mkdir(parents=True)
    source.to_csv(target, index=False)
    result = predict_categories("small_a", DATE, data_prefix=str(prefix), spark=spark)
    assert result.rows_skipped == 2
    assert _output(prefix, "small_a")["product_id"].nunique() == len(source) - 2


def _broken_prefix(trained, tmp_path, writer):
    prefix = tmp_path / "prefix"
    shutil.copytree(trained / "products_categories", prefix / "products_categories", dirs_exist_ok=True)
    target = prefix / "prediction/client_id=small_a/data_predict.csv.gz"
    target.parent.mkdir(parents=True)
    writer(target)
    return prefix


def _assert_previous_output_kept(trained, prefix):
    before = _output(trained, "small_a").sort_values(["product_id", "rank"]).reset_index(drop=True)
    after = _output(prefix, "small_a").sort_values(["product_id", "rank"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(before, after)


@pytest.mark.parametrize("writer, pattern", [
    (lambda path: path.write_bytes(gzip.compress(b"product_id,f0,f1\np1,1,2\n")),
     r"missing column\(s\) 'f2', 'f3', 'f4' that the model needs"),
    (lambda path: path.write_bytes(gzip.compress(b"product_id,f0,f1,f2,f3,f4\np1,1,2,x,4,5\n")),
     r"a feature value is not a number"),
    (lambda path: path.write_bytes(b""), r"is empty"),
])
def test_bad_prediction_input_fails_clearly_and_keeps_previous_output(trained, spark, tmp_path, writer, pattern):
    predict_categories("small_a", DATE, data_prefix=str(trained), spark=spark)
    prefix = _broken_prefix(trained, tmp_path, writer)
    with pytest.raises(InputDataError, match=f"client 'small_a': file .*data_predict.csv.gz: .*{pattern}"):
        predict_categories("small_a", DATE, data_prefix=str(prefix), spark=spark)
    _assert_previous_output_kept(trained, prefix)


@pytest.mark.usefixtures("trained")
def test_missing_prediction_file(spark, tmp_path):
    with pytest.raises(InputDataError, match=r"client 'small_a': file .*data_predict.csv.gz: not found"):
        predict_categories("small_a", DATE, data_prefix=str(tmp_path), spark=spark)


def test_client_without_a_model(trained, spark):
    with pytest.raises(ModelNotFoundError, match=r"client 'small_c': no registered model 'small_c_model'"):
        predict_categories("small_c", DATE, data_prefix=str(trained), spark=spark)


# Where a run killed between the two renames of its swap left the old output and its staging folder.
KILLED_MID_SWAP = {
    "staging-tree": ("_staging/client_id=small_a/_previous-date=2026-11-27-deadbeef",
                     "_staging/client_id=small_a/date=2026-11-27-cafebabe"),
    "earlier-version-in-dataset": ("products_categories/client_id=small_a/_previous-date=2026-11-27-deadbeef",
                                   "products_categories/client_id=small_a/_staging-date=2026-11-27-cafebabe"),
}


@pytest.mark.parametrize("form", PREFIX_FORMS.values(), ids=PREFIX_FORMS.keys())
@pytest.mark.parametrize("previous, staging", KILLED_MID_SWAP.values(), ids=KILLED_MID_SWAP.keys())
def test_leftovers_of_a_killed_run_are_recovered(trained, spark, previous, staging, form):
    folder = output_folder(trained, "small_a").parent
    predict_categories("small_a", "2026-11-27", data_prefix=form.format(trained), spark=spark)
    before = _output(trained, "small_a", "2026-11-27")
    (trained / previous).parent.mkdir(parents=True, exist_ok=True)
    (folder / "date=2026-11-27").rename(trained / previous)
    (trained / staging).mkdir()
    (trained / staging / "part-0.parquet").write_bytes(b"half written")
    predict_categories("small_a", "2026-11-27", data_prefix=form.format(trained), spark=spark)
    assert sorted(p.name for p in folder.iterdir() if "2026-11-27" in p.name) == ["date=2026-11-27"]
    assert not staging_leftovers(trained, "small_a") and not non_parquet_in_dataset(trained)
    pd.testing.assert_frame_equal(
        before.sort_values(["product_id", "rank"]).reset_index(drop=True),
        _output(trained, "small_a", "2026-11-27").sort_values(["product_id", "rank"]).reset_index(drop=True))


def test_duplicate_product_ids_fail_clearly_and_keep_previous_output(trained, spark, tmp_path):
    predict_categories("small_a", DATE, data_prefix=str(trained), spark=spark)
    source = pd.read_csv(trained / "prediction/client_id=small_a/data_predict.csv.gz")
    twice, thrice = sorted(source["product_id"].iloc[[5, 9]])
    extra = pd.concat([source[source["product_id"] == twice], source[source["product_id"] == thrice].iloc[[0, 0]]])
    prefix = _broken_prefix(trained, tmp_path, lambda path: pd.concat([source, extra]).to_csv(path, index=False))
    with pytest.raises(InputDataError) as raised:
        predict_categories("small_a", DATE, data_prefix=str(prefix), spark=spark)
    message = str(raised.value)
    assert re.fullmatch(
        rf"client 'small_a': file \S*data_predict\.csv\.gz: 2 product_id value\(s\) appear more than once "
        rf"\(5 rows, e\.g\. '{twice}', '{thrice}'\): expected one row per product_id; .*", message), message
    assert "\n" not in message
    _assert_previous_output_kept(trained, prefix)
    folder = output_folder(prefix, "small_a").parent
    assert not [path.name for path in folder.iterdir() if path.name.startswith("_")]
    assert not staging_leftovers(prefix, "small_a")  # staging removed


def test_duplicate_check_is_exact_across_partitions(spark):
    products = spark.createDataFrame([("a",), ("b",), ("c",), ("b",), ("d",), ("a",), ("a",)], "product_id string")
    with pytest.raises(InputDataError, match=r"2 product_id value\(s\) appear more than once \(5 rows, e\.g\. 'a', 'b'\)"):
        raise_on_duplicates("x", "file.csv.gz", products.repartition(3))
    raise_on_duplicates("x", "file.csv.gz", products.dropDuplicates().repartition(3))  # no error: all unique
