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

# What Spark 4 reports when the output's file system fills up while parquet is written (frames trimmed).
FULL_DISK_TRACE = """An error occurred while calling o186.parquet.
: org.apache.spark.SparkException: [TASK_WRITE_FAILED] Task failed while writing rows to file:/mnt/data/products_categories/client_id=big/_staging-date=2026-11-23-60b8a045ab8b. SQLSTATE: 58030
\tat org.apache.spark.sql.errors.QueryExecutionErrors$.taskFailedWhileWritingRowsError(QueryExecutionErrors.scala:823)
\tat py4j.ClientServerConnection.run(ClientServerConnection.java:108)
\tat java.base/java.lang.Thread.run(Thread.java:840)
Caused by: org.apache.parquet.util.AutoCloseables$ParquetCloseResourceException: Unable to close resource
\tat org.apache.parquet.util.AutoCloseables.uncheckedClose(AutoCloseables.java:85)
\tat java.base/java.util.concurrent.ThreadPoolExecutor$Worker.run(ThreadPoolExecutor.java:635)
\t... 1 more
Caused by: org.apache.hadoop.fs.FSError: java.io.IOException: No space left on device
\tat org.apache.hadoop.fs.RawLocalFileSystem$LocalFSFileOutputStream.write(RawLocalFileSystem.java:549)
\t... 29 more
\tSuppressed: org.apache.hadoop.fs.FSError: java.io.IOException: No space left on device
\t\tat org.apache.hadoop.fs.RawLocalFileSystem$LocalFSFileOutputStream.write(RawLocalFileSystem.java:549)
\t\t... 31 more
\t\tSuppressed: org.apache.hadoop.fs.FSError: java.io.IOException: Stream closed
\t\t\tat org.apache.hadoop.fs.RawLocalFileSystem$LocalFSFileOutputStream.write(RawLocalFileSystem.java:549)
\t\tCaused by: java.io.IOException: Stream closed
\t\t\tat java.base/java.io.FileOutputStream.writeBytes(Native Method)
\t\t\t... 44 more
\tCaused by: java.io.IOException: Disk quota exceeded
\t\tat java.base/java.io.FileOutputStream.writeBytes(Native Method)
\t\t... 43 more
Caused by: java.io.IOException: No space left on device
\tat java.base/java.io.FileOutputStream.writeBytes(Native Method)
\tat java.base/java.io.FileOutputStream.write(FileOutputStream.java:349)
\t... 43 more
"""


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
