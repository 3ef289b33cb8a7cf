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
