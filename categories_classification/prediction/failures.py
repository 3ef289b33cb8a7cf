"""What a Spark error raised while scoring and writing means, on one line.

Spark reports every failure of a job as a long Java stack trace. Known input problems (a value
that is not a number, a file that is not gzip) name the input file; anything else is a fault of
the infrastructure (a full disk, a lost executor, storage refusing a write), named by its
innermost Java cause. Kept free of Spark imports: it reads only the error's text.
"""
from categories_classification.errors import (
    CategoriesError,
    InfrastructureError,
    InputDataError,
    error_text,
    root_cause,
)

_NOT_A_NUMBER = ("MALFORMED_RECORD", "Malformed records", "NumberFormatException")
_NOT_GZIP = ("ZipException", "EOFException", "Not in GZIP format", "incorrect header check")
NOTHING_WRITTEN = "nothing written, the output of this date is left as it was"


def spark_failure(client_id: str, source: str, target: str, error: Exception) -> CategoriesError:
    """The one-line error for ``error``, raised by Spark while ``source`` was scored into ``target``."""
    text = error_text(error)
    if any(marker in text for marker in _NOT_A_NUMBER):
        return InputDataError(
            f"file {source}: a feature value is not a number (Spark could not parse a row as "
            "product_id + numeric features): expected numbers in every feature column",
            client_id,
        )
    if any(marker in text for marker in _NOT_GZIP):
        return InputDataError(f"file {source}: is not a valid gzip file: expected a gzip-compressed CSV", client_id)
    cause = root_cause(error, text)
    if "FAILED_READ_FILE" in text:
        return InputDataError(f"file {source}: cannot be read ({cause}); {NOTHING_WRITTEN}", client_id)
    return InfrastructureError(
        f"output {target}: Spark failed while scoring {source} and writing it: {cause}; {NOTHING_WRITTEN}",
        client_id,
    )
