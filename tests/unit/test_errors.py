"""Library failures reduced to what a person can act on: the innermost Java cause, the errno and path."""
import pytest
from mlflow.exceptions import MlflowException
from pyspark.errors import PySparkException

from categories_classification.errors import (
    InfrastructureError,
    describe_os_error,
    infrastructure_error,
    java_root_cause,
    unexpected,
)
from tests.helpers import FULL_DISK_TRACE


def test_the_innermost_cause_of_the_main_chain_is_found_past_suppressed_ones():
    assert java_root_cause(FULL_DISK_TRACE) == "java.io.IOException: No space left on device"


def test_without_caused_by_the_first_exception_line_is_the_cause():
    trace = ("An error occurred while calling o42.csv.\n"
             ": java.io.FileNotFoundException: File file:/data/x.csv.gz does not exist\n"
             "\tat org.apache.hadoop.fs.RawLocalFileSystem.deprecatedGetFileStatus(RawLocalFileSystem.java:915)\n")
    assert java_root_cause(trace) == "java.io.FileNotFoundException: File file:/data/x.csv.gz does not exist"


def test_a_wrapping_cause_gives_the_wrapped_one_and_a_message_may_span_lines():
    assert java_root_cause("Caused by: org.apache.hadoop.fs.FSError: java.io.IOException: Input/output error\n"
                           "\tat org.apache.hadoop.fs.RawLocalFileSystem.write(RawLocalFileSystem.java:549)\n"
                           ) == "java.io.IOException: Input/output error"
    assert java_root_cause("Caused by: java.lang.IllegalStateException: first line\nsecond line\n"
                           "\tat a.b.C.d(C.java:1)\n") == "java.lang.IllegalStateException: first line second line"
    assert java_root_cause("Caused by: java.lang.NullPointerException\n\tat a.b.C.d(C.java:1)\n") == \
        "java.lang.NullPointerException"


def test_text_without_a_java_exception_has_no_root_cause():
    assert java_root_cause("ValueError: could not convert string to float: 'x'") is None
    assert java_root_cause("") is None


def test_os_errors_name_the_errno_the_reason_and_the_path(tmp_path):
    with pytest.raises(OSError) as missing:
        (tmp_path / "absent.csv").read_bytes()
    assert describe_os_error(missing.value) == f"ENOENT (No such file or directory) at {tmp_path / 'absent.csv'}"
    with pytest.raises(OSError) as full:  # /dev/full: every write fails with ENOSPC
        with open("/dev/full", "wb", buffering=0) as device:
            device.write(b"x")
    assert describe_os_error(full.value) == "ENOSPC (No space left on device)"


def test_infrastructure_failures_are_not_unexpected(tmp_path):
    with pytest.raises(OSError) as missing:
        (tmp_path / "absent").read_bytes()
    fault = infrastructure_error(missing.value, "client_0")
    assert isinstance(fault, InfrastructureError) and fault.exit_code == 1
    assert str(fault) == f"client 'client_0': ENOENT (No such file or directory) at {tmp_path / 'absent'}"
    assert str(infrastructure_error(MlflowException("Artifact store refused the upload\nmore"))) == \
        "MLflow failed: MlflowException: Artifact store refused the upload"
    spark = infrastructure_error(PySparkException(f"[TASK_WRITE_FAILED] Task failed\n{FULL_DISK_TRACE}"))
    assert str(spark) == "Spark failed: java.io.IOException: No space left on device"
    # A programming error stays what it is.
    assert infrastructure_error(KeyError("f0")) is None
    assert unexpected(KeyError("f0"), "client_0") == "client 'client_0': unexpected KeyError: 'f0'"
