"""A small exception hierarchy; the CLI turns each into a one-line message and an exit code.

Also the pure helpers that reduce a library's failure (a Java stack trace, an ``OSError``) to the
few words a person can act on.
"""
import errno
import re
from typing import Optional


class CategoriesError(Exception):
    """Base of every error this package raises on purpose.

    The message always names the client (when known), the file or key concerned, what was
    expected and what was found, so that it is useful on one line in an Airflow task log.
    """

    exit_code = 1

    def __init__(self, message: str, client_id: Optional[str] = None) -> None:
        self.client_id = client_id
        self.detail = message
        prefix = f"client {client_id!r}: " if client_id else ""
        super().__init__(prefix + message)


class ConfigError(CategoriesError):
    """The clients configuration or a command-line value is invalid."""

    exit_code = 2


class InputDataError(CategoriesError):
    """A client's input file is missing, unreadable or does not match the expected schema."""


class ModelNotFoundError(CategoriesError):
    """No registered model (or not the requested version) exists for a client."""


class TrackingError(CategoriesError):
    """The MLflow tracking server or store could not be used."""


class InfrastructureError(CategoriesError):
    """The machine or a service failed (a full disk, the artifact store, Spark's JVM), not the input data."""


class ModelIntegrityError(InfrastructureError):
    """A registered model's stored file is damaged, or was changed after it was registered."""


def one_line(error: object, limit: int = 300) -> str:
    """``error``'s text on one line (whitespace collapsed), cut at ``limit`` characters.

    The one way this package shortens a message from a library (MLflow, Spark, YAML) before it
    goes into its own one-line errors.
    """
    text = " ".join(str(error).split())
    return text[:limit] + "..." if len(text) > limit else text


# A Java class name at the start of a line: lower-case packages, then the class (inner classes with $).
_JAVA_EXCEPTION = re.compile(r"(?P<name>(?:[a-z_][\w$]*\.)+[A-Z][\w$]*)(?::\s?(?P<message>.*))?")
# Where an exception's message ends in a stack trace: its frames, "... N more", the next exception.
_TRACE_LINE = re.compile(r"\s+(?:at |\.\.\. \d+ more)|\s*(?:Caused by|Suppressed): ")
CAUSED_BY = "Caused by: "


def java_root_cause(trace: str) -> Optional[str]:
    """The innermost cause in a Java stack trace's text, as ``<class>: <message>``; None if it has no Java exception.

    The last ``Caused by:`` at the start of a line ends the main chain (indented ones belong to
    suppressed exceptions); without one, the first exception line is the cause. A cause whose
    message is itself ``<class>: <message>`` (Hadoop's ``FSError: java.io.IOException: ...``)
    gives the inner one.
    """
    lines = trace.splitlines()
    starts = [index for index, line in enumerate(lines) if line.startswith(CAUSED_BY)]
    if starts:
        index, first = starts[-1], lines[starts[-1]][len(CAUSED_BY):]
    else:
        found = next(((index, line.removeprefix(": ")) for index, line in enumerate(lines)
                      if _JAVA_EXCEPTION.fullmatch(line.removeprefix(": "))), None)
        if found is None:
            return None
        index, first = found
    match = _JAVA_EXCEPTION.fullmatch(first)
    if match is None:
        return None
    name, message = match["name"], match["message"] or ""
    # A message may span lines: they run until the first stack frame.
    for line in lines[index + 1:]:
        if _TRACE_LINE.match(line):
            break
        message += " " + line
    inner = _JAVA_EXCEPTION.fullmatch(message.strip())
    while inner is not None and inner["message"] is not None:
        name, message = inner["name"], inner["message"]
        inner = _JAVA_EXCEPTION.fullmatch(message.strip())
    message = one_line(message)
    return f"{name}: {message}" if message else name


def describe_os_error(error: OSError) -> str:
    """An ``OSError`` as ``<ERRNO> (<reason>) at <path>``, e.g. ``ENOSPC (No space left on device) at /data/x``."""
    code = errno.errorcode.get(error.errno) if isinstance(error.errno, int) else None
    reason = error.strerror or one_line(error) or type(error).__name__
    text = f"{code} ({reason})" if code else f"{type(error).__name__}: {reason}"
    paths = [str(path) for path in (error.filename, error.filename2) if path is not None]
    return text + (f" at {' -> '.join(paths)}" if paths else "")


def error_text(error: BaseException) -> str:
    """``str(error)``, with the JVM stack trace a PySpark error keeps aside; never raises.

    A Py4J error asks the JVM for its text, which fails once the JVM is gone.
    """
    try:
        text = str(error)
    except Exception:  # pylint: disable=broad-except  # the JVM behind the error may be dead
        text = type(error).__name__
    trace = getattr(error, "_stackTrace", None)  # PySpark's captured exceptions keep the JVM trace here
    return f"{text}\n{trace}" if isinstance(trace, str) and trace not in text else text


# Failures of the services this package uses, by the qualified name of their base class (no import
# needed to recognise them): they are faults of the environment, not of this package's code.
_SERVICE_ERRORS = {
    "mlflow.exceptions.MlflowException": "MLflow",
    "py4j.protocol.Py4JError": "Spark",
    "pyspark.errors.exceptions.base.PySparkException": "Spark",
}


def infrastructure_error(error: BaseException, client_id: Optional[str] = None) -> Optional[InfrastructureError]:
    """``error`` as a one-line :class:`InfrastructureError` if the file system, MLflow or Spark raised it, else None.

    The last wall before :func:`unexpected`: only what no stage mapped on its own reaches it.
    """
    if isinstance(error, OSError):
        return InfrastructureError(describe_os_error(error), client_id)
    for cls in type(error).__mro__:
        service = _SERVICE_ERRORS.get(f"{cls.__module__}.{cls.__qualname__}")
        if service is not None:
            return InfrastructureError(f"{service} failed: {root_cause(error)}", client_id)
    return None


def root_cause(error: BaseException, text: Optional[str] = None) -> str:
    """The innermost cause of a library's error: the Java one in its text (``text``, else
    :func:`error_text`), else the error's class and first line."""
    text = error_text(error) if text is None else text
    return java_root_cause(text) or f"{type(error).__name__}: {first_line(text)}"


def first_line(text: str) -> str:
    """The first non-blank line of ``text``, shortened by :func:`one_line`."""
    return one_line((text.strip().splitlines() or [""])[0])


def unexpected(error: BaseException, client_id: Optional[str] = None) -> str:
    """The one line shown for an error this package did not expect (a bug, not bad input)."""
    prefix = f"client {client_id!r}: " if client_id else ""
    # The first line only: an unexpected error's text may carry a whole (Java) stack trace.
    return f"{prefix}unexpected {type(error).__name__}: {first_line(str(error))}"


class ServiceLostError(InfrastructureError):
    """A service the command was using (Spark Connect, MLflow) went away while work was under way."""


# How a lost connection shows in a library's error text (gRPC, urllib3, the OS), in a few words.
_CONNECTION_REASONS = (
    ("connection reset", "connection reset"),
    ("connection refused", "connection refused"),
    ("socket closed", "connection closed"),
    ("broken pipe", "connection closed"),
    ("remotedisconnected", "connection closed"),
    ("connection aborted", "connection closed"),
    ("timed out", "timed out"),
    ("deadline_exceeded", "timed out"),
    ("name or service not known", "host not found"),
)


def connection_reason(text: str) -> Optional[str]:
    """What a lost connection's error text says happened, in a few words (``connection reset``, ``timed out``...);
    None if the text does not tell of a lost connection."""
    lowered = text.lower()
    return next((reason for marker, reason in _CONNECTION_REASONS if marker in lowered), None)


def service_lost(client_id: str, service: str, when: str, reason: str, date: str) -> ServiceLostError:
    """The one line of a client whose work stopped because ``service`` went away ``when``: nothing of it was written.

    ``client 'client_3': Spark Connect at sc://127.0.0.1:15002 was lost during scoring (connection reset);
    nothing written, the output of 2026-12-01 is left as it was``
    """
    return ServiceLostError(f"{service} was lost {when} ({reason}); nothing written, "
                            f"the output of {date} is left as it was", client_id)
