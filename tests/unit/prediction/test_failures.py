"""Spark errors of the scoring job: known input problems name the input, anything else its root cause."""
from categories_classification.errors import InfrastructureError, InputDataError
from categories_classification.prediction.failures import spark_failure
from tests.helpers import FULL_DISK_TRACE

SOURCE = "/data/prediction/client_id=c/data_predict.csv.gz"
TARGET = "/data/products_categories/client_id=c/date=2026-11-23"


def test_a_full_disk_names_the_output_the_input_the_cause_and_what_stays():
    error = spark_failure("c", SOURCE, TARGET, RuntimeError(FULL_DISK_TRACE))
    assert isinstance(error, InfrastructureError) and not isinstance(error, InputDataError)
    assert str(error) == (
        f"client 'c': output {TARGET}: Spark failed while scoring {SOURCE} and writing it: "
        "java.io.IOException: No space left on device; nothing written, the output of this date is left as it was")


def test_known_input_problems_still_name_the_input_file():
    malformed = spark_failure("c", SOURCE, TARGET, RuntimeError(
        "An error occurred while calling o90.parquet.\n: org.apache.spark.SparkException: [MALFORMED_RECORD_IN_PARSING]"))
    assert isinstance(malformed, InputDataError) and "a feature value is not a number" in str(malformed)
    not_gzip = spark_failure("c", SOURCE, TARGET, RuntimeError(
        "Caused by: java.util.zip.ZipException: Not in GZIP format\n\tat java.base/java.util.zip.GZIPInputStream"))
    assert isinstance(not_gzip, InputDataError) and str(not_gzip).endswith("expected a gzip-compressed CSV")


def test_an_error_without_a_java_trace_keeps_its_class_and_first_line():
    error = spark_failure("c", SOURCE, TARGET, RuntimeError("Python worker exited unexpectedly\ndetails"))
    assert "writing it: RuntimeError: Python worker exited unexpectedly; nothing written" in str(error)
