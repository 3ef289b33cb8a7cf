"""Which model family a client gets: the choice rule among candidates scored on one validation split.

Pure: numpy only. Every candidate is scored on the same validation rows (carved out of the
training split), so two candidates are compared by the paired difference of their top-5 hits.
"""
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

# A candidate within this many standard errors of the best one's validation top-5 is as good
# as the best on rows the validation split did not hold: among those, the smallest wins.
CHOICE_STANDARD_ERRORS = 1.0


@dataclass(frozen=True)
class Candidate:
    """One family's fitted candidate: its validation top-5 hits (one bool per row), size and cost."""

    family: str
    hits: np.ndarray
    size_bytes: int  # in memory, at the size it would have on the whole training split
    fit_seconds: float
    within_budget: bool = True

    @property
    def accuracy(self) -> float:
        """Validation top-5 accuracy."""
        return float(np.mean(self.hits)) if len(self.hits) else 0.0


@dataclass(frozen=True)
class Choice:
    """The chosen candidate and why."""

    family: str
    best_family: str  # the candidate with the best validation top-5 (within budget)
    margin: float  # z standard errors of the chosen candidate's paired gap to the best (0 for the best)
    reason: str


def paired_gap(best: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of (best hit - other hit) over the same rows."""
    difference = np.asarray(best, dtype=np.float64) - np.asarray(other, dtype=np.float64)
    if len(difference) < 2:
        return (float(difference.mean()) if len(difference) else 0.0), 0.0
    return float(difference.mean()), float(difference.std(ddof=1) / math.sqrt(len(difference)))


def choose(candidates: Sequence[Candidate], z: float = CHOICE_STANDARD_ERRORS) -> Choice:
    """The smallest candidate within ``z`` standard errors (paired) of the best validation top-5.

    Candidates over their size budget are left out unless none fits (then the smallest of all
    wins). Ties in size go to the earlier candidate: list the simpler families first.
    """
    if not candidates:
        raise ValueError("choose needs at least one candidate")
    lengths = {len(candidate.hits) for candidate in candidates}
    if len(lengths) != 1:
        raise ValueError(f"candidates must be scored on the same validation rows, found lengths {sorted(lengths)}")
    fitting = [candidate for candidate in candidates if candidate.within_budget]
    if not fitting:
        smallest = _smallest(candidates)
        return Choice(smallest.family, smallest.family, 0.0,
                      f"no candidate fits the size budget: the smallest, {smallest.family} "
                      f"({smallest.size_bytes / 1e6:.1f} MB)")
    best = max(fitting, key=lambda candidate: candidate.accuracy)  # first of equals: the simpler
    margins = {}
    for candidate in fitting:
        gap, error = paired_gap(best.hits, candidate.hits)
        if gap <= z * error + 1e-12:
            margins[candidate.family] = z * error
    equal = [candidate for candidate in fitting if candidate.family in margins]
    chosen = _smallest(equal)
    reason = (f"{chosen.family}: validation top-5 {chosen.accuracy:.4f}, "
              + ("the best" if chosen is best else
                 f"within {z:g} SE of the best ({best.family} {best.accuracy:.4f})")
              + f", and the smallest such ({chosen.size_bytes / 1e6:.1f} MB)")
    return Choice(chosen.family, best.family, margins[chosen.family], reason)


def _smallest(candidates: Sequence[Candidate]) -> Candidate:
    return min(candidates, key=lambda candidate: candidate.size_bytes)  # min keeps the first of equals


def by_family(candidates: Sequence[Candidate], family: str) -> Optional[Candidate]:
    """The candidate of ``family``, or None."""
    return next((candidate for candidate in candidates if candidate.family == family), None)
