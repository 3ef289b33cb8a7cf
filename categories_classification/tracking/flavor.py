"""Logging and registering a model: MLflow's sklearn flavour with its skops file deflated, a
self-contained top-k pyfunc (:mod:`categories_classification.serving`), pinned requirements, and
each version tagged with the SHA-256 of its stored file and of its companion files.

Models are stored in skops format and loaded with the project's list of trusted types, never with
the list recorded inside the artifact and never with pickle (see :mod:`.artifacts`).
"""
import io
import logging
import shutil
import tempfile
from contextlib import redirect_stderr
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import unquote, urlparse

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import MLMODEL_FILE_NAME
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

from categories_classification import serving
from categories_classification.errors import CategoriesError
from categories_classification.records import (
    CLIENT_ID_TAG,
    COMPANION_DIGEST_SUFFIX,
    MODEL_ARTIFACT,
    MODEL_SIZE_METRIC,
    model_name,
)
from categories_classification.serialization import DIGEST_TAG, SKOPS_TRUSTED_TYPES, deflate_file, sha256_hex
from categories_classification.topk import TOP_K
from categories_classification.tracking.locks import promotion_lock
from categories_classification.tracking.registry import ModelRef
from categories_classification.tracking.runs import log_to_run
from categories_classification.tracking.store import retrying, tracking_errors

LOGGER = logging.getLogger(__name__)
PACKAGE = Path(serving.__file__).resolve().parent
# The distributions a registered model needs besides MLflow (its requirements.txt, pinned).
SERVING_DISTRIBUTIONS = ("scikit-learn", "skops", "numpy", "scipy", "pandas", "pyarrow")


class _DeflatedSklearnFlavor:
    """MLflow's sklearn flavour, with its skops file deflated before upload, and a self-contained pyfunc.

    A forest's class-probability arrays are mostly zeros: deflate stores them 5-7x smaller, which
    is what the registry's disk, the upload and every download pay for. The file stays a skops
    zip, so MLflow's own loader and ours read it unchanged. The model carries the few project
    modules it needs (:data:`~categories_classification.serving.SHIPPED_MODULES`, MLflow's
    ``code_paths``) and its ``python_function`` flavour is :mod:`categories_classification.serving`
    (top-k rows, digest checked, trusted types only): stock MLflow loads and serves it anywhere.
    """

    def __init__(self, client_id: str, companions: Optional[Mapping[str, str]] = None) -> None:
        self.__name__ = "mlflow.sklearn"  # what MLflow reports as the flavour
        self.client_id = client_id
        self.stored_bytes = 0
        self.digest = ""
        self.companions = dict(companions or {})
        self.companion_digests = {name: sha256_hex(text.encode("utf-8")) for name, text in self.companions.items()}

    def save_model(self, path: str, mlflow_model: Any, **kwargs: Any) -> None:
        """Save with MLflow's sklearn flavour and the shipped code, deflate the model file, take its SHA-256.

        Companion files are written into the model's folder: they are uploaded with it and come
        back with every download of the version, at no extra request.
        """
        kwargs.pop("validate_serving_input", None)  # Model.log's own option, passed on to every flavour
        with tempfile.TemporaryDirectory(prefix="categories_code_") as staging:
            mlflow.sklearn.save_model(path=path, mlflow_model=mlflow_model, code_paths=[str(_shipped_package(Path(staging)))],
                                      **kwargs)
        sklearn_conf = mlflow_model.flavors["sklearn"]
        model_file = Path(path) / sklearn_conf["pickled_model"]
        self.stored_bytes = deflate_file(model_file)
        # The digest of exactly the bytes that are uploaded: every load checks them against it.
        self.digest = sha256_hex(model_file.read_bytes())
        # MLflow's sklearn pyfunc would predict the top-1 label only: serve the top-k rows instead.
        env = mlflow_model.flavors.pop(mlflow.pyfunc.FLAVOR_NAME)[mlflow.pyfunc.ENV]
        mlflow.pyfunc.add_to_model(mlflow_model, loader_module=serving.__name__, data=sklearn_conf["pickled_model"],
                                   code=sklearn_conf["code"], conda_env=env["conda"], python_env=env["virtualenv"],
                                   **{DIGEST_TAG: self.digest, serving.CLIENT_KEY: self.client_id})
        mlflow_model.save(str(Path(path) / MLMODEL_FILE_NAME))
        for name, text in self.companions.items():
            (Path(path) / name).write_text(text, encoding="utf-8")


def _shipped_package(staging: Path) -> Path:
    """A copy of the package holding only the modules a registered model needs (its ``code_paths``)."""
    package = staging / PACKAGE.name
    package.mkdir()
    for module in serving.SHIPPED_MODULES:
        shutil.copy2(PACKAGE / module, package / module)
    return package


def serving_signature(features: Sequence[str]) -> ModelSignature:
    """A version's signature: the features (doubles) and an optional ``product_id`` in, the top-k rows out.

    The outputs are declared (lists per product, as :class:`~categories_classification.serving.TopKCategories`
    returns them), so ``spark_udf`` knows its result type; ``k`` is a request parameter.
    """
    return ModelSignature(
        inputs=Schema([*(ColSpec(DataType.double, feature) for feature in features),
                       ColSpec(DataType.string, serving.PRODUCT, required=False)]),
        outputs=Schema([ColSpec(DataType.string, serving.PRODUCT, required=False),
                        ColSpec(Array(DataType.string), serving.LABEL),
                        ColSpec(Array(DataType.double), serving.SCORE),
                        ColSpec(Array(DataType.integer), serving.RANK)]),
        params=ParamSchema([ParamSpec(serving.K_PARAM, DataType.long, TOP_K)]),
    )


def pinned_requirements() -> list[str]:
    """What a registered model needs to load and serve (MLflow adds itself), pinned to this environment's versions."""
    return [f"{name}=={metadata.version(name)}" for name in SERVING_DISTRIBUTIONS]


@dataclass(frozen=True)
class LoggedModel:
    """A model logged in the training's run, not registered yet: where it is and its files' digests."""

    client_id: str
    run_id: str
    model_id: str
    model_uri: str  # models:/<model id>
    digest: str
    companion_digests: tuple[tuple[str, str], ...]
    stored_bytes: int


def log_model(client_id: str, model: Any, input_example: Any, signature: Any,
              companions: Optional[Mapping[str, str]] = None,
              metrics: Optional[Mapping[str, float]] = None) -> LoggedModel:
    """Log ``model`` (deflated skops) in the active run, without registering it (see :func:`register`).

    Logs the stored file's size as the run's ``model_size_bytes`` metric, with ``metrics`` (the
    training's), in one request after the model: they are the logged model's metrics too (logged
    before it, MLflow would copy them to it one metric history read at a time). ``companions`` (file
    name -> text) are stored in the model's folder, beside the model file (the drift reference).
    A lost database connection is tried again (a failed attempt's logged model stays unregistered).
    """
    flavor = _DeflatedSklearnFlavor(client_id, companions)

    def log() -> Any:
        return mlflow.models.Model.log(
            artifact_path=None,  # deprecated in favour of name=, but still a positional parameter
            flavor=flavor,
            sk_model=model,
            name=MODEL_ARTIFACT,
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
            skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
            signature=signature,
            input_example=input_example,
            # Explicit requirements: MLflow would otherwise re-load the model in a subprocess to
            # infer them, which costs seconds per training for a known answer. The numeric
            # libraries are pinned too: a served score is then the batch's to the last bit.
            pip_requirements=pinned_requirements(),
            # MLflow would load the model back and predict the input example to check it could be
            # served: this project's loaders (the gate, prediction) read it back anyway.
            validate_serving_input=False,
        )

    info = retrying(client_id, log)
    run_id = mlflow.active_run().info.run_id
    retrying(client_id, lambda: log_to_run(run_id, metrics={**(metrics or {}), MODEL_SIZE_METRIC: float(flavor.stored_bytes)},
                                           model_id=info.model_id))
    return LoggedModel(client_id, run_id, info.model_id, f"models:/{info.model_id}",
                       flavor.digest, tuple(sorted(flavor.companion_digests.items())), flavor.stored_bytes)


def register(logged: LoggedModel, tags: Optional[Mapping[str, str]] = None) -> ModelRef:
    """Register a model of :func:`log_model` as a new version of the client's model, tagged with its
    files' SHA-256 (``model_sha256``, ``<companion>.sha256``), the client id and ``tags``.

    The tags are written with the version, in the same transaction: no version exists without its
    digest. The registered model gets its description and ``client_id`` tag when it is created.
    """
    client_id, name = logged.client_id, model_name(logged.client_id)
    client = MlflowClient()
    retrying(client_id, lambda: _ensure_registered_model(client, client_id, name))
    version_tags = {DIGEST_TAG: logged.digest,
                    **{companion + COMPANION_DIGEST_SUFFIX: digest for companion, digest in logged.companion_digests},
                    CLIENT_ID_TAG: client_id, **(tags or {})}
    chatter = io.StringIO()
    # MLflow prints "Successfully registered model ..." straight to stderr: keep it for debug logs.
    with redirect_stderr(chatter):
        version = retrying(client_id, lambda: mlflow.register_model(logged.model_uri, name, tags=version_tags).version)
    LOGGER.debug("%s", chatter.getvalue().strip())
    return ModelRef(client_id, name, int(version), logged.run_id, logged.digest, logged.companion_digests)


def _ensure_registered_model(client: MlflowClient, client_id: str, name: str) -> None:
    """The client's registered model, created with its description and ``client_id`` tag if it does not exist
    (one read when it does); one found without them (made by hand, or by an older release) gets them."""
    try:
        found = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        found = None
    if found is not None and found.description and found.tags.get(CLIENT_ID_TAG) == client_id:
        return
    if found is None:
        try:
            client.create_registered_model(name, tags={CLIENT_ID_TAG: client_id}, description=_description(client_id))
            return
        except MlflowException as exc:
            # Another training of the client created it between our lookup and create.
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
    # The registered model's own tag is read-then-inserted by MLflow: two trainings of one client
    # at once collide on PostgreSQL (a unique-key violation). One at a time, under the client's lock.
    with promotion_lock(client_id):
        if not client.get_registered_model(name).description:
            client.update_registered_model(name, _description(client_id))
        client.set_registered_model_tag(name, CLIENT_ID_TAG, client_id)


def _description(client_id: str) -> str:
    return (f"Product categoriser of client {client_id} (top-5 categories; the model family is chosen at each "
            "training).")


def log_and_register(client_id: str, model: Any, input_example: Any, signature: Any,
                     companions: Optional[Mapping[str, str]] = None) -> ModelRef:
    """:func:`log_model` then :func:`register` (for callers with nothing to log in between)."""
    return register(log_model(client_id, model, input_example, signature, companions))


def discard_version(ref: ModelRef) -> None:
    """Delete a version registered by a training that then failed, so that no gate, list or fleet view
    shows it; a failure to do so is logged (``--verbose``), never raised (the training's own error is the one to tell)."""
    try:
        retrying(ref.client_id, lambda: MlflowClient().delete_model_version(ref.name, str(ref.version)))
    except CategoriesError as exc:
        LOGGER.info("client %s: model %s version %s of the failed training could not be deleted: %s",
                       ref.client_id, ref.name, ref.version, exc)


def discard_artifacts(client_id: str, run_id: str) -> None:
    """Remove what a failed training wrote in the artifact store: its run's files, and its logged models
    (also one whose logging failed half-way) with their files.

    The run itself stays (FAILED, with its failure reason); a failure to remove is logged (``--verbose``),
    never raised: the training's own error is the one line to tell.
    """
    client = MlflowClient()

    def find() -> tuple[list[str], list[str]]:
        run = client.get_run(run_id)
        models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
        return [run.info.artifact_uri, *(model.artifact_location for model in models)], [m.model_id for m in models]

    try:
        locations, model_ids = retrying(client_id, find)
        for location in locations:
            with tracking_errors(client_id):
                get_artifact_repository(location).delete_artifacts()
                _remove_empty_parent(location)
        for model_id in model_ids:
            retrying(client_id, lambda model_id=model_id: client.delete_logged_model(model_id))
    except CategoriesError as exc:
        LOGGER.info("client %s: the files of failed run %s could not be removed from the artifact store: %s",
                       client_id, run_id, exc)


def _remove_empty_parent(location: str) -> None:
    """The ``<run id>`` (or ``models/<model id>``) folder of a local ``.../artifacts`` location, if now empty."""
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        folder = Path(unquote(parsed.path))
        for parent in (folder, folder.parent):
            try:
                parent.rmdir()
            except OSError:
                return
