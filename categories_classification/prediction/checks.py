"""Checks: pure functions over what the Spark job counted for one client (no Spark, no MLflow).

The workers send back one statistics record per client and partition (``scoring.ClientStats``:
rows, written, skipped, malformed rows and an example, repeated id hashes, rows per drift bin).
Each function here reads those records, or a result the driver computed from the input, and
returns a problem (the client's one-line error, raised by the caller) or a verdict; none raises
or writes. Only the exact duplicate count needs Spark: :func:`may_have_duplicates` says when to
run it (``job.raise_on_duplicates``), :func:`duplicates_problem` words its result.
"""
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from categories_classification import drift
from categories_classification.config import DEFAULT_DRIFT_THRESHOLD
from categories_classification.errors import ConfigError, InputDataError
from categories_classification.prediction.failures import NOTHING_WRITTEN

DUPLICATE_EXAMPLES = 3  # product ids a duplicate error shows
Stats = Sequence[Mapping[str, Any]]  # one record per partition that saw the client


class DriftError(InputDataError):
    """The input drifted from the training data beyond the threshold, and ``fail_on_drift`` was asked."""


@dataclass(frozen=True)
class DriftCheck:
    """How a client's input is compared with its version's drift reference (None: the version has none)."""

    threshold: float
    fail: bool = False
    reference: Optional[dict[str, Any]] = None
    missing: str = ""  # why there is no reference

    def edges(self, features: Sequence[str]) -> tuple[tuple[float, ...], ...]:
        """Per feature, the reference's inner bin edges (what the workers count rows into)."""
        if self.reference is None:
            return ()
        return tuple(tuple(self.reference["features"][name]["edges"]) for name in features)


@dataclass(frozen=True)
class DriftVerdict:
    """The drift check of one client: its scores (None: not checked), and what to do about them."""

    report: Optional[drift.DriftReport] = None
    problem: Optional[DriftError] = None  # drifted, and fail_on_drift: the client's error
    warning: str = ""  # drifted, predictions written: what to warn about


def threshold(client_id: str, value: Optional[float]) -> float:
    """A client's drift threshold: ``value`` if given (a positive number), else the project default."""
    if value is None:
        return DEFAULT_DRIFT_THRESHOLD
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"drift_threshold: expected a positive number (a PSI), found {value!r}", client_id)
    return float(value)


def count(stats: Stats, key: str) -> int:
    """A counter summed over the partitions that saw the client."""
    return sum(int(entry[key]) for entry in stats)


def bin_counts(stats: Stats, features: Sequence[str]) -> dict[str, list[int]]:
    """Per feature, the rows per drift-reference bin summed over the partitions that saw the client."""
    totals: dict[str, list[int]] = {}
    for entry in stats:
        for name, counts in zip(features, entry.get("drift_counts") or []):
            known = totals.setdefault(name, [0] * len(counts))
            totals[name] = [a + int(b) for a, b in zip(known, counts)]
    return totals


def malformed_problem(client_id: str, source: str, stats: Stats) -> Optional[InputDataError]:
    """The client's error if a row of ``source`` did not parse (a value not a number, a field too many)."""
    malformed = count(stats, "malformed")
    if not malformed:
        return None
    example = next(entry["malformed_example"] for entry in stats if entry["malformed"])
    return InputDataError(
        f"file {source}: a feature value is not a number, or a row has the wrong number of fields "
        f"({malformed} row(s), e.g. {example!r}): expected product_id and numbers in every feature column; "
        f"{NOTHING_WRITTEN}", client_id)


def may_have_duplicates(stats: Stats) -> bool:
    """False when the workers' own check rules duplicate ids out; True when only an exact count can.

    A client seen by one partition had every row hashed together: no repeated hash means no
    duplicate, exactly. A repeated hash (a duplicate, or a 64-bit collision) or rows spread over
    partitions need the exact count over the input.
    """
    return len(stats) > 1 or count(stats, "repeated") > 0


def duplicates_problem(client_id: str, source: str, ids: int, rows: int,
                       examples: Sequence[Optional[str]]) -> Optional[InputDataError]:
    """The client's error when ``ids`` product_id values appear more than once (``rows`` rows), else None."""
    if not ids:
        return None  # a 64-bit hash collision, not a duplicate
    shown = ", ".join(repr(example if example is not None else "") for example in examples[:DUPLICATE_EXAMPLES])
    return InputDataError(
        f"file {source}: {ids} product_id value(s) appear more than once ({rows} rows, "
        f"e.g. {shown}): expected one row per product_id; {NOTHING_WRITTEN}", client_id)


def drift_verdict(client_id: str, source: str, model: str, check: DriftCheck, stats: Stats,
                  features: Sequence[str]) -> DriftVerdict:
    """Score the input against the version's reference: nothing, a warning, or (``fail_on_drift``) a problem.

    ``model`` names the version in messages (``<name> version <n>``).
    """
    if check.reference is None:
        return DriftVerdict()
    report = drift.drift_report(check.reference, bin_counts(stats, features), check.threshold)
    if not report.drifted:
        return DriftVerdict(report)
    what = (f"file {source}: the input drifted from {model}'s training data: "
            f"{report.describe_over()} over the threshold {report.threshold:g}")
    if check.fail:
        return DriftVerdict(report, DriftError(f"{what} (fail_on_drift); {NOTHING_WRITTEN}", client_id))
    return DriftVerdict(report, warning=what)


def drift_record(check: DriftCheck, report: Optional[drift.DriftReport]) -> dict[str, Any]:
    """The manifest's (and the result's) ``drift`` object: the scores, or why there are none."""
    if check.reference is None:
        return drift.no_reference(check.missing)
    if report is None:  # not reached: the check runs before the manifest is written
        return drift.no_reference("not computed")
    return report.to_dict()
