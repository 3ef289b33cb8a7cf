"""A small exception hierarchy; the CLI turns each into a one-line message and an exit code."""
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
    """A service or storage the stack relies on failed (Spark, a file system): not the input's fault."""


def one_line(error: object, limit: int = 300) -> str:
    """``error``'s text on one line (whitespace collapsed), cut at ``limit`` characters.

    The one way this package shortens a message from a library (MLflow, Spark, YAML) before it
    goes into its own one-line errors.
    """
    text = " ".join(str(error).split())
    return text[:limit] + "..." if len(text) > limit else text


def unexpected(error: BaseException, client_id: Optional[str] = None) -> str:
    """The one line shown for an error this package did not expect (a bug, not bad input)."""
    prefix = f"client {client_id!r}: " if client_id else ""
    # The first line only: an unexpected error's text may carry a whole (Java) stack trace.
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{prefix}unexpected {type(error).__name__}: {one_line(first)}"
