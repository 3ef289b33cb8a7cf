"""Typed, validated client settings loaded once from ``conf/clients_config.yaml``.

The file maps each client id to ``features`` (a non-empty list of column names), optional
``params`` (keyword arguments of ``sklearn.ensemble.RandomForestClassifier``, or of the pinned
``family``'s estimator), optional ``family`` (one of :data:`MODEL_FAMILIES`: pins the model
family instead of choosing it per client, see :mod:`categories_classification.training.selection`), optional
``promotion_tolerance`` (see :mod:`categories_classification.training.promotion`), optional
``max_model_mb``, the size budget of the client's forest in memory (see
:mod:`categories_classification.training.sizing`), and the fleet view's optional
``max_model_age_days`` and ``drift_threshold`` (see :mod:`categories_classification.fleet`)::

    client_0:
      features: [f0, f1, f2, f3, f4]
      params:
        n_estimators: 100
      max_model_mb: 20
    client_1:
      features: [f0, f1]
      family: extra_trees        # pinned: params are ExtraTreesClassifier's
      params: {n_estimators: 50}

Client ids and feature names end up in Airflow dag ids, file paths and shell commands, so
both must match ``^[A-Za-z0-9_]+$``; anything else is rejected here, before it is used.
"""
import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from categories_classification.errors import ConfigError, one_line

DEFAULT_CONFIG_FILE = "conf/clients_config.yaml"
# Training runs every 30 days: a champion older than this missed a retraining (per client: max_model_age_days).
DEFAULT_MAX_MODEL_AGE_DAYS = 45
# Population stability index above which a prediction's input has drifted (per client: drift_threshold).
DEFAULT_DRIFT_THRESHOLD = 0.2
SAFE_NAME = re.compile(r"[A-Za-z0-9_]+")  # always used with fullmatch: "$" would accept a final "\n"
_SAFE_NAME_HINT = "letters, digits and '_' only (it is used in dag ids, paths and shell commands)"
# Model families a client may get (config key ``family``), each with its sklearn estimator. Without
# ``family``, training chooses among all of them and ``params`` are RandomForest parameters, as before.
MODEL_FAMILIES = {
    "random_forest": "sklearn.ensemble.RandomForestClassifier",
    "extra_trees": "sklearn.ensemble.ExtraTreesClassifier",
    "hist_gradient_boosting": "sklearn.ensemble.HistGradientBoostingClassifier",
    "mlp": "sklearn.neural_network.MLPClassifier",
    "knn": "sklearn.neighbors.KNeighborsClassifier",
    "qda": "sklearn.discriminant_analysis.QuadraticDiscriminantAnalysis",
    "logistic": "sklearn.linear_model.LogisticRegression",
}
FOREST_FAMILIES = ("random_forest", "extra_trees")
# Families whose inputs are standardised inside the registered model (a Pipeline with a StandardScaler).
SMOOTH_FAMILIES = ("logistic", "qda", "knn", "mlp")
DEFAULT_FAMILY = "random_forest"  # what params mean when no family is pinned
# ``family: ensemble`` pins an ensemble of the best candidates; ``family: [mlp, knn]`` (or "mlp+knn")
# pins an ensemble of those members. An ensemble's params are keyed by member family.
ENSEMBLE = "ensemble"
MEMBER_SEPARATOR = "+"


def config_file(path: Optional[Union[str, Path]] = None) -> Path:
    """The config path: ``path`` if given, else ``$CONFIG_FILE``, else ``conf/clients_config.yaml``."""
    return Path(path or os.environ.get("CONFIG_FILE") or DEFAULT_CONFIG_FILE)


def is_client_id(value: Any) -> bool:
    """True if ``value`` is a safe, non-empty name (what :func:`validate_client_id` accepts)."""
    return isinstance(value, str) and bool(SAFE_NAME.fullmatch(value))


def validate_client_id(client_id: Any) -> str:
    """Return ``client_id`` if it is a safe, non-empty name; raise :class:`ConfigError` otherwise."""
    if not is_client_id(client_id):
        raise ConfigError(f"client id: expected {_SAFE_NAME_HINT}, found {client_id!r}")
    return client_id


def validate_features(features: Any, client_id: Optional[str] = None) -> list[str]:
    """Return ``features`` as a list if it is a non-empty list of distinct safe column names."""
    return _validated("features", features, client_id)


def validate_model_params(params: Any, client_id: Optional[str] = None, family: Optional[str] = None) -> dict[str, Any]:
    """Return ``params`` if every key is a parameter of ``family``'s estimator (default RandomForest) with a valid value."""
    return _validated("params", params, client_id, {"family": family})


def validate_family(value: Any, client_id: Optional[str] = None) -> Optional[str]:
    """Return ``value`` if it names one of :data:`MODEL_FAMILIES`, or None (no family pinned)."""
    return _validated("family", value, client_id)


def ensemble_members(family: Optional[str]) -> Optional[tuple[str, ...]]:
    """The members an (already validated) ``family`` pins: () for ``ensemble`` (the best candidates), None if no ensemble."""
    if family == ENSEMBLE:
        return ()
    if family is not None and MEMBER_SEPARATOR in family:
        return tuple(family.split(MEMBER_SEPARATOR))
    return None


def estimator_class(family: str) -> type:
    """The sklearn estimator class of a model family (imported on demand: sklearn is slow to import)."""
    module, _, name = MODEL_FAMILIES[family].rpartition(".")
    return getattr(importlib.import_module(module), name)


def validate_max_model_mb(value: Any, client_id: Optional[str] = None) -> Optional[float]:
    """Return ``value`` as a float if it is a valid size budget in MB (a positive number), or None."""
    return _validated("max_model_mb", value, client_id)


def _validated(key: str, value: Any, client_id: Optional[str], beside: Optional[Mapping[str, Any]] = None) -> Any:
    """``value`` as the config's ``key`` would hold it (the same rules, next to ``beside``), or :class:`ConfigError`."""
    entry = {"features": ["_"], **(beside or {}), key: value}  # a valid stand-in for the other required key
    try:
        return getattr(_ClientModel(**entry), key)
    except ValidationError as exc:
        raise _config_error(exc, client_id) from None


@dataclass(frozen=True)
class ClientConfig:
    """Settings of one client: the feature columns, the model family (None: chosen) and its parameters."""

    client_id: str
    features: tuple[str, ...]
    params: Mapping[str, Any]
    promotion_tolerance: Optional[float] = None
    max_model_mb: Optional[float] = None  # size budget of the forest in memory; None: the project default
    max_model_age_days: int = DEFAULT_MAX_MODEL_AGE_DAYS  # older champions are flagged by the fleet view
    drift_threshold: float = DEFAULT_DRIFT_THRESHOLD  # a prediction's drift score above it is flagged
    family: Optional[str] = None  # a pinned model family; None: chosen per client at training


@dataclass(frozen=True)
class ClientsConfig:
    """All clients of a config file, keyed and iterated in sorted client-id order."""

    path: Path
    clients: Mapping[str, ClientConfig]

    def __iter__(self):
        return iter(self.clients[key] for key in sorted(self.clients))

    def __len__(self) -> int:
        return len(self.clients)

    def get(self, client_id: str) -> ClientConfig:
        """The settings of ``client_id``; :class:`ConfigError` if the config does not list it."""
        try:
            return self.clients[client_id]
        except KeyError:
            raise ConfigError(
                f"not found in {self.path}: expected one of {', '.join(sorted(self.clients)) or '(none)'}",
                client_id,
            ) from None

    def select(self, client_ids: Sequence[str]) -> "ClientsConfig":
        """Only ``client_ids`` (all clients when empty); :class:`ConfigError` names any unknown id."""
        if not client_ids:
            return self
        return ClientsConfig(self.path, {client_id: self.get(client_id) for client_id in client_ids})


def load_config(path: Optional[Union[str, Path]] = None) -> ClientsConfig:
    """Load and validate the clients config (see the module docstring for the format)."""
    source = config_file(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {source}: cannot be read ({exc.strerror or exc})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeySafeLoader)  # a SafeLoader: never builds objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {source}: not valid YAML ({one_line(exc)})") from None
    except ConfigError as exc:  # duplicate keys, found by the loader
        raise ConfigError(f"config file {source}: {exc.detail}") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"config file {source}: expected a mapping of client ids to settings, found {type(raw).__name__}"
        )
    clients = {}
    for client_id, entry in raw.items():
        try:
            validate_client_id(client_id)
        except ConfigError as exc:
            raise ConfigError(f"config file {source}: {exc.detail}") from None
        if not isinstance(entry, dict):
            raise ConfigError(
                f"config file {source}: expected a mapping with 'features' and optional 'params', "
                f"found {type(entry).__name__}",
                client_id,
            )
        try:
            model = _ClientModel(**{str(key): value for key, value in entry.items()})
        except ValidationError as exc:
            raise _config_error(exc, client_id, source) from None
        clients[client_id] = ClientConfig(
            client_id, tuple(model.features), dict(model.params), model.promotion_tolerance, model.max_model_mb,
            DEFAULT_MAX_MODEL_AGE_DAYS if model.max_model_age_days is None else model.max_model_age_days,
            DEFAULT_DRIFT_THRESHOLD if model.drift_threshold is None else model.drift_threshold, model.family)
    return ClientsConfig(source, clients)


class _ClientModel(BaseModel):
    """The schema of one client entry; pydantic does the structural checks."""

    model_config = ConfigDict(extra="forbid", strict=True)

    features: list[str] = Field(min_length=1)
    # Declared before params: the params are checked against the family's estimator.
    family: Optional[Union[str, list[str]]] = None
    params: dict[str, Any] = Field(default_factory=dict)
    # How much worse (top-5 accuracy, 0..1) a new version may be and still become champion.
    promotion_tolerance: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    # Size budget of the forest in memory (MB = 10^6 bytes); bounds the automatic max_leaf_nodes.
    max_model_mb: Optional[float] = Field(default=None, gt=0.0, allow_inf_nan=False)
    # Age (days since its training date) past which the fleet view flags the champion as stale.
    max_model_age_days: Optional[int] = Field(default=None, gt=0)
    # Drift score (PSI) of a prediction's input past which the fleet view flags the client.
    drift_threshold: Optional[float] = Field(default=None, gt=0.0, allow_inf_nan=False)

    @field_validator("features")
    @classmethod
    def _safe_distinct_names(cls, features: list[str]) -> list[str]:
        for name in features:
            if not SAFE_NAME.fullmatch(name):
                raise ValueError(f"column name {name!r} is not allowed: expected {_SAFE_NAME_HINT}")
        duplicates = sorted({name for name in features if features.count(name) > 1})
        if duplicates:
            raise ValueError(f"column names must be distinct, found {', '.join(duplicates)} more than once")
        return features

    @field_validator("family")
    @classmethod
    def _known_family(cls, family: Optional[Union[str, list[str]]]) -> Optional[str]:
        if family is None or family == ENSEMBLE:
            return family
        members = family.split(MEMBER_SEPARATOR) if isinstance(family, str) else list(family)
        expected = f"one of {', '.join(MODEL_FAMILIES)}, {ENSEMBLE!r} or a list of two or more of those families"
        unknown = [member for member in members if member not in MODEL_FAMILIES]
        if unknown or (isinstance(family, list) and len(members) < 2) or len(set(members)) != len(members):
            raise ValueError(f"unknown model family: expected {expected}, found {family!r}")
        return MEMBER_SEPARATOR.join(members)

    @field_validator("params")
    @classmethod
    def _estimator_params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        family = info.data.get("family") if "family" in info.data else None
        members = ensemble_members(family)
        if members is None:
            _check_estimator_params(params, family or DEFAULT_FAMILY)
            return params
        allowed = members or tuple(MODEL_FAMILIES)
        for member, member_params in params.items():
            if member not in allowed:
                raise ValueError(f"an ensemble's params are keyed by member family: expected some of "
                                 f"{', '.join(allowed)}, found {member!r}")
            if not isinstance(member_params, dict):
                raise ValueError(f"params of member {member!r}: expected a mapping, found {member_params!r}")
            _check_estimator_params(member_params, member)
        return params


def _check_estimator_params(params: dict[str, Any], family: str) -> None:
    # sklearn is imported here, not at module level: loading the config (DAG generation, CLI
    # --help) must stay cheap, and only a config with params needs the estimator's signature.
    # pylint: disable=import-outside-toplevel
    from sklearn.utils._param_validation import InvalidParameterError

    if not params:
        return
    estimator = estimator_class(family)
    known = estimator().get_params()
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(
            f"unknown {estimator.__name__} parameter(s) {', '.join(map(repr, unknown))}: "
            f"expected some of {', '.join(sorted(known))}"
        )
    try:
        # The estimator's own constraint table: the same check fit() would do, done up front.
        estimator(**params)._validate_params()  # pylint: disable=protected-access
    except InvalidParameterError as exc:
        raise ValueError(one_line(exc)) from None


def _config_error(exc: ValidationError, client_id: Optional[str], source: Optional[Path] = None) -> ConfigError:
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "entry"
    where = f"config file {source}: " if source else ""
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = ("unknown key: expected only 'features', 'family', 'params', 'max_model_age_days', "
                   "'drift_threshold', 'promotion_tolerance' and 'max_model_mb'")
    found = first.get("input")
    suffix = "" if first["type"] in {"value_error", "missing"} else f", found {found!r}"
    return ConfigError(f"{where}key {key!r}: {message}{suffix}", client_id)


class _UniqueKeySafeLoader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
    """``yaml.SafeLoader`` that rejects duplicate keys (safe_load silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def seconds_setting(variable: str, default: float, *, zero_means: Optional[str] = None) -> float:
    """A duration in seconds from the environment variable ``variable`` (``default`` when unset or empty).

    Positive and finite; 0 too when ``zero_means`` says what it does. Anything else is a
    :class:`ConfigError` naming the variable, what was expected and what was found.
    """
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    lowest_ok = 0 <= value if zero_means is not None else 0 < value
    if not (lowest_ok and value < float("inf")):
        expected = (f"a number of seconds >= 0 (0: {zero_means})" if zero_means is not None
                    else "a positive number of seconds")
        raise ConfigError(f"environment variable {variable}: expected {expected}, found {raw!r}")
    return value
