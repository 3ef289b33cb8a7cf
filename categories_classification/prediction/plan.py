"""Plan: everything that can be known of a client's prediction before the Spark job, as an immutable value.

For each client: the model version (its champion, or the pinned one), the version's skops file on
this machine (checked once here, kept in a cache folder named by version and run), its input
columns, its drift reference (or why there is none), and the input file's header (read on the
driver, or through Spark for a remote file system). A client that cannot be planned (no model, an
untrusted file, no input, a missing column) has that error as its outcome; the others go on.
"""
import gzip
import json
import logging
import tempfile
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from py4j.protocol import Py4JJavaError
from pyspark.errors import AnalysisException, PySparkException

from categories_classification import drift
from categories_classification.config import validate_client_id
from categories_classification.errors import CategoriesError, InputDataError, ModelNotFoundError, one_line
from categories_classification.paths import is_uri, predict_path
from categories_classification.prediction import output
from categories_classification.prediction.checks import DriftCheck, threshold
from categories_classification.prediction.scoring import ClientModel
from categories_classification.prediction.spark import get_spark
from categories_classification.records import CHAMPION
from categories_classification.serialization import untrusted_types
from categories_classification.tracking.artifacts import companion_problem, fetch_model_and_companion
from categories_classification.tracking.registry import ModelRef, resolve_model

LOGGER = logging.getLogger(__name__)
PINNED = "pinned"  # the model_selector of a version asked for (else CHAMPION)
CACHE_FOLDER = "categories_models"  # under the temporary folder: the model files the workers are shipped


@dataclass(frozen=True)
class ClientPlan:
    """One client's prediction as the job needs it: input, output place, model version and file, drift check."""

    client_id: str
    date: str
    source: str
    place: output.Placement
    ref: ModelRef
    selector: str
    model_file: Path
    features: tuple[str, ...]
    header: tuple[str, ...]
    drift: DriftCheck

    @property
    def target(self) -> str:
        """The client's output folder for the date."""
        return self.place.target

    @property
    def model(self) -> ClientModel:
        """What the workers need to score this client."""
        return ClientModel(self.model_file.name, self.features, self.drift.edges(self.features))

    @property
    def model_label(self) -> str:
        """``<name> version <n>`` (messages)."""
        return f"{self.ref.name} version {self.ref.version}"


def plan_clients(client_ids: Sequence[str], date: str, prefix: str, versions: Mapping[str, Optional[int]],
                 thresholds: Mapping[str, float], fail_on_drift: bool) -> tuple[list[ClientPlan], dict[str, Exception]]:
    """The plan of every client that can be planned, and the error of each that cannot (by its given id)."""
    plans: list[ClientPlan] = []
    failures: dict[str, Exception] = {}
    for client_id in client_ids:
        try:
            check = DriftCheck(threshold(client_id, thresholds.get(client_id)), fail_on_drift)
            plans.append(plan_client(validate_client_id(client_id), date, prefix, versions.get(client_id), check))
        except CategoriesError as exc:
            failures[client_id] = exc
    return plans, failures


def plan_client(client_id: str, date: str, prefix: str, version: Optional[int], check: DriftCheck) -> ClientPlan:
    """Everything that can be checked before the Spark job: the model, its file, its drift reference, the header."""
    source, place = predict_path(client_id, prefix), output.placement(client_id, date, prefix)
    ref = resolve_model(client_id, version)
    model_file, features, stored = model_file_of(ref)
    check = _with_reference(check, ref, features, stored)
    header = read_header(client_id, source)
    missing = [column for column in ["product_id", *features] if column not in header]
    if missing:
        raise InputDataError(
            f"file {source}: missing column(s) {', '.join(map(repr, missing))} that the model needs: "
            f"expected product_id, {', '.join(features)}, found {', '.join(header)}", client_id)
    selector = PINNED if version is not None else CHAMPION
    return ClientPlan(client_id, date, source, place, ref, selector, model_file, features, header, check)


def _with_reference(check: DriftCheck, ref: ModelRef, features: Sequence[str], stored: Optional[str]) -> DriftCheck:
    """``check`` with the version's drift reference, or the reason it has none (never an error)."""
    if stored is None:
        return DriftCheck(check.threshold, check.fail, None,
                          f"version {ref.version} was trained before drift references were stored")
    try:
        reference = json.loads(stored)
    except ValueError:
        reference = None
    problem = (companion_problem(ref, drift.REFERENCE_FILE, stored)
               or drift.reference_problem(reference, features))
    if problem is not None:
        LOGGER.warning("client %s: the drift reference of %s version %s is unusable (%s): drift not checked",
                       ref.client_id, ref.name, ref.version, problem)
        return DriftCheck(check.threshold, check.fail, None, f"the stored reference is unusable ({problem})")
    return DriftCheck(check.threshold, check.fail, reference)


def model_file_of(ref: ModelRef) -> tuple[Path, tuple[str, ...], Optional[str]]:
    """The version's skops file on this machine (checked here, once), its input columns and its drift reference."""
    model_bytes, features, reference = fetch_model_and_companion(ref, drift.REFERENCE_FILE)
    # Checked on the driver so that an unsafe file fails once, clearly, instead of in every task.
    refused = untrusted_types(model_bytes)
    if refused:
        raise ModelNotFoundError(
            f"model {ref.name} version {ref.version} needs untrusted type(s) {', '.join(refused)}; refusing to load it",
            ref.client_id)
    if not features:
        raise ModelNotFoundError(f"model {ref.name} version {ref.version} has no input signature", ref.client_id)
    # Named by version and run, so that a shipped name always means the same bytes.
    path = Path(tempfile.gettempdir()) / CACHE_FOLDER / f"{ref.name}-v{ref.version}-{ref.run_id[:12]}.skops"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_bytes() != model_bytes:
        staging = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        staging.write_bytes(model_bytes)
        staging.replace(path)
    return path, tuple(features), reference


def read_header(client_id: str, source: str) -> tuple[str, ...]:
    """The input's column names, read on the driver (one line, not a Spark job), or through Spark for a URI."""
    if is_uri(source) and not source.startswith("file:"):
        return _spark_header(client_id, source)
    local = Path(source[len("file:"):]) if source.startswith("file:") else Path(source)
    try:
        with gzip.open(local, "rt", encoding="utf-8", newline="") as handle:
            first = handle.readline()
    except FileNotFoundError:
        raise InputDataError(f"file {source}: not found (expected a gzip CSV at this path; is DATA_PREFIX right?)",
                             client_id) from None
    except (gzip.BadGzipFile, zlib.error, EOFError):
        raise InputDataError(f"file {source}: is not a valid gzip file: expected a gzip-compressed CSV", client_id) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputDataError(f"file {source}: cannot be read ({one_line(exc)})", client_id) from None
    return _columns(client_id, source, first)


def _spark_header(client_id: str, source: str) -> tuple[str, ...]:
    try:
        first = get_spark().read.text(source).first()
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" in str(exc) or "Path does not exist" in str(exc):
            raise InputDataError(
                f"file {source}: not found (expected a gzip CSV at this path; is DATA_PREFIX right?)", client_id
            ) from None
        raise InputDataError(f"file {source}: cannot be read ({one_line(exc)})", client_id) from None
    except (PySparkException, Py4JJavaError) as exc:
        raise InputDataError(f"file {source}: cannot be read as gzip CSV ({one_line(exc)})", client_id) from None
    return _columns(client_id, source, first.value if first is not None else "")


def _columns(client_id: str, source: str, first: str) -> tuple[str, ...]:
    """The column names of a header line (an empty line: the file is empty)."""
    if not first.strip():
        raise InputDataError(f"file {source}: is empty: expected a header row and data", client_id)
    return tuple(column.strip() for column in first.split(","))
