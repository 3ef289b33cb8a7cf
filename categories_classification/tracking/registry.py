"""A client's registered versions and its champion: resolve the version to serve, move the
``champion`` alias, list and describe versions, and tell whether a DAG run's training is the champion."""
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from categories_classification.errors import ModelNotFoundError
from categories_classification.records import (
    CHAMPION,
    COMPANION_DIGEST_SUFFIX,
    PROMOTION_DECISION_TAG,
    TRAINING_DATE_TAG,
    TrainingRecord,
    model_name,
)
from categories_classification.serialization import DIGEST_TAG
from categories_classification.tracking.store import tracking_errors
from categories_classification.tracking.uri import display_tracking_uri

# What MLflow answers for a version or an alias that is not there.
_ABSENT = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
NAMES_PER_SEARCH = 100  # model names in one registry search's IN list (a filter that stays a short request)


@dataclass(frozen=True)
class ModelRef:
    """One registered model version and the run that produced it.

    ``digest`` is the SHA-256 registered with the file (the ``model_sha256`` tag): "" when the
    version was registered without one, None when it has not been looked up;
    ``companion_digests`` those of the files stored beside it, as (file name, SHA-256) pairs.
    """

    client_id: str
    name: str
    version: int
    run_id: str
    digest: Optional[str] = None
    companion_digests: tuple[tuple[str, str], ...] = ()

    @property
    def uri(self) -> str:
        """``models:/<name>/<version>``."""
        return f"models:/{self.name}/{self.version}"


def version_ref(client_id: str, found: Any) -> ModelRef:
    """A :class:`ModelRef` of an MLflow ``ModelVersion`` (whose tags hold the files' digests)."""
    tags = found.tags or {}
    companions = tuple(sorted((key[:-len(COMPANION_DIGEST_SUFFIX)], value) for key, value in tags.items()
                              if key.endswith(COMPANION_DIGEST_SUFFIX)))
    return ModelRef(client_id, found.name, int(found.version), found.run_id, tags.get(DIGEST_TAG, ""), companions)


def looked_up(ref: ModelRef) -> ModelRef:
    """``ref`` with its digests read from the registry (when it was made without them)."""
    if ref.digest is not None:
        return ref
    with tracking_errors(ref.client_id):
        return version_ref(ref.client_id, MlflowClient().get_model_version(ref.name, str(ref.version)))


def resolve_model(client_id: str, version: Optional[int] = None) -> ModelRef:
    """The version to serve: ``version`` if given (pin or roll back), else the ``champion`` alias.

    :class:`ModelNotFoundError` if the client has no registered model, no champion, or no such
    version.
    """
    name = model_name(client_id)
    client = MlflowClient()
    with tracking_errors(client_id):
        if version is not None:
            try:
                found = client.get_model_version(name, str(version))
            except MlflowException as exc:
                if exc.error_code not in _ABSENT:
                    raise
                raise ModelNotFoundError(
                    f"model {name!r} has no version {version}: expected one of "
                    f"{_version_list(client, name) or '(none: train the client first)'}",
                    client_id,
                ) from None
            return version_ref(client_id, found)
        champion = champion_version(client_id)
    if champion is None:
        existing = _version_list(client, name)
        if not existing:
            raise ModelNotFoundError(
                f"no registered model {name!r} in {display_tracking_uri()}: train the client first (trainer / train-all)",
                client_id,
            )
        raise ModelNotFoundError(
            f"registered model {name!r} has no {CHAMPION!r} version (versions: {existing}): "
            "choose one with set-champion or pass --model_version",
            client_id,
        )
    return champion


def champion_version(client_id: str) -> Optional[ModelRef]:
    """The client's current champion, or None (no model, or no version has the alias yet)."""
    name = model_name(client_id)
    with tracking_errors(client_id):
        try:
            found = MlflowClient().get_model_version_by_alias(name, CHAMPION)
        except MlflowException as exc:
            if exc.error_code in _ABSENT:
                return None
            raise
    return version_ref(client_id, found)


def champions(client_ids: Sequence[str]) -> dict[str, ModelRef]:
    """The champion of every client of ``client_ids`` that has one, in a few registry searches for the fleet.

    The registered models (their aliases) in searches of :data:`NAMES_PER_SEARCH` names, then the
    champion versions (their run and digests) in one search per champion version number and as
    many names: a fleet trained on one schedule has a handful of them. A client without a model or
    a champion is absent (:func:`resolve_model` says why).
    """
    names = {model_name(client_id): client_id for client_id in client_ids}
    client = MlflowClient()
    with tracking_errors(None):
        numbers: dict[str, list[str]] = {}
        for chunk in _chunks(sorted(names)):
            for model in client.search_registered_models(filter_string=f"name IN ({_quoted(chunk)})",
                                                         max_results=len(chunk)):
                if model.name in names and CHAMPION in model.aliases:
                    numbers.setdefault(str(model.aliases[CHAMPION]), []).append(model.name)
        found: dict[str, ModelRef] = {}
        for number, holders in numbers.items():
            for chunk in _chunks(holders):
                for version in client.search_model_versions(
                        filter_string=f"name IN ({_quoted(chunk)}) AND version_number = {int(number)}",
                        max_results=len(chunk)):
                    found[names[version.name]] = version_ref(names[version.name], version)
    return found


def _chunks(names: Sequence[str]) -> Iterable[Sequence[str]]:
    return (names[start:start + NAMES_PER_SEARCH] for start in range(0, len(names), NAMES_PER_SEARCH))


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)  # client ids are validated: no quote in a name


def set_champion(client_id: str, version: int) -> ModelRef:
    """Give the ``champion`` alias to ``version`` (promotion, or a rollback by hand)."""
    ref = resolve_model(client_id, version)
    with tracking_errors(client_id):
        MlflowClient().set_registered_model_alias(ref.name, CHAMPION, str(ref.version))
    return ref


def list_versions(client_id: str) -> list[dict[str, Any]]:
    """Every version of the client's model, newest first, with its training metrics and aliases."""
    name = model_name(client_id)
    client = MlflowClient()
    with tracking_errors(client_id):
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise ModelNotFoundError(f"no registered model {name!r} in {display_tracking_uri()}", client_id)
        aliases = client.get_registered_model(name).aliases
        rows = []
        for version in sorted(versions, key=lambda v: int(v.version), reverse=True):
            run = client.get_run(version.run_id)
            rows.append({
                "version": int(version.version),
                "aliases": sorted(alias for alias, number in aliases.items() if str(number) == str(version.version)),
                "training_date": run.data.tags.get(TRAINING_DATE_TAG, ""),
                "run_id": version.run_id,
                "metrics": dict(run.data.metrics),
                "decision": run.data.tags.get(PROMOTION_DECISION_TAG, ""),
            })
    return rows


def describe_version(ref: ModelRef, description: str, tags: dict[str, str]) -> None:
    """Set a version's description and tags (what the MLflow UI shows next to it)."""
    client = MlflowClient()
    with tracking_errors(ref.client_id):
        client.update_model_version(ref.name, str(ref.version), description=description)
        for key, value in tags.items():
            client.set_model_version_tag(ref.name, str(ref.version), key, value)


@dataclass(frozen=True)
class ChampionSource:
    """The client's champion and the training that made it, against a DAG run asking "was it mine?"."""

    champion: Optional[ModelRef]
    training: Optional[TrainingRecord]  # the champion's training run, as recorded
    dag_id: str
    dag_run_id: str

    @property
    def promoted_by_dag_run(self) -> bool:
        """True when the DAG run's own training promoted the current champion (publish it)."""
        return (self.training is not None and self.training.promoted
                and self.training.dag_run == (self.dag_id, self.dag_run_id))

    @property
    def source(self) -> str:
        """``<dag id> run <dag run id>`` of the champion's training, ``(not Airflow) run -`` outside Airflow."""
        dag_id, dag_run_id = self.training.dag_run if self.training is not None else (None, None)
        return f"{dag_id or '(not Airflow)'} run {dag_run_id or '-'}"


def champion_from_run(client_id: str, dag_id: str, dag_run_id: str) -> ChampionSource:
    """Whether DAG run ``dag_run_id`` of ``dag_id`` trained the client's current champion (champion-from-run)."""
    champion = champion_version(client_id)
    if champion is None:
        return ChampionSource(None, None, dag_id, dag_run_id)
    with tracking_errors(client_id):
        data = MlflowClient().get_run(champion.run_id).data
    return ChampionSource(champion, TrainingRecord.from_run(data.tags, data.metrics), dag_id, dag_run_id)


def _version_list(client: MlflowClient, name: str) -> str:
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return ""
    return ", ".join(str(number) for number in sorted(int(v.version) for v in versions))
