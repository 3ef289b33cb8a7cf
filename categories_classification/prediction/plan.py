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
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from py4j.protocol import Py4JJavaError
from pyspark.errors import AnalysisException, PySparkException

from categories_classification import drift
from categories_classification.config import is_client_id, validate_client_id
from categories_classification.errors import CategoriesError, InputDataError, one_line
from categories_classification.paths import is_local, predict_path
from categories_classification.prediction import output
from categories_classification.prediction.checks import DriftCheck, threshold
from categories_classification.prediction.scoring import ClientModel
from categories_classification.prediction.spark import get_spark
from categories_classification.records import CHAMPION
from categories_classification.prediction.model_cache import cached_model
from categories_classification.tracking.artifacts import companion_problem
from categories_classification.tracking.registry import ModelRef, champions, resolve_model

LOGGER = logging.getLogger(__name__)
PINNED = "pinned"  # the model_selector of a version asked for (else CHAMPION)


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
    known = _champions([client_id for client_id in client_ids if versions.get(client_id) is None])
    for client_id in client_ids:
        try:
            check = DriftCheck(threshold(client_id, thresholds.get(client_id)), fail_on_drift)
            plans.append(plan_client(validate_client_id(client_id), date, prefix, versions.get(client_id), check,
                                     known.get(client_id)))
        except CategoriesError as exc:
            failures[client_id] = exc
    return plans, failures


def _champions(client_ids: Sequence[str]) -> dict[str, ModelRef]:
    """The champions of a fleet in a few registry searches; {} for one client, or if the search fails (then each
    client looks its own up, and a failure is that client's own line)."""
    valid = [client_id for client_id in client_ids if is_client_id(client_id)]
    if len(valid) < 2:
        return {}
    try:
        return champions(valid)
    except CategoriesError as exc:
        LOGGER.info("the fleet's champions were not found in one search (%s): looked up client by client", exc)
        return {}


def plan_client(client_id: str, date: str, prefix: str, version: Optional[int], check: DriftCheck,
                champion: Optional[ModelRef] = None) -> ClientPlan:
    """Everything that can be checked before the Spark job: the model, its file, its drift reference, the header.

    ``champion``: the client's champion when already looked up (a fleet's, in one search).
    """
    source, place = predict_path(client_id, prefix), output.placement(client_id, date, prefix)
    ref = champion if champion is not None and version is None else resolve_model(client_id, version)
    cached = cached_model(ref, drift.REFERENCE_FILE)  # checked against the registered digest
    model_file, features = cached.path, cached.features
    check = _with_reference(check, ref, features, cached.reference)
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


def read_header(client_id: str, source: str) -> tuple[str, ...]:
    """The input's column names, read on the driver (one line, not a Spark job), or through Spark for a URI."""
    if not is_local(source):
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
