"""Which model a client gets: the choice rule among candidates scored on one validation split.

Pure: numpy only. Every candidate is scored on the same validation rows (carved out of the
training split), so two candidates are compared by the paired difference of their top-5 hits.
Accuracy comes first: the most accurate candidate within the size budget wins, ties go to the
smaller. An ensemble must earn its place: it is kept only when it beats the best single candidate
by more than the noise of the validation rows.
"""
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# An ensemble must beat the best single candidate's validation top-5 by more than this many
# standard errors of their paired difference: it was assembled from the best candidates on these
# very rows, so a gain within the noise would not carry over to rows the validation split did not hold.
ENSEMBLE_STANDARD_ERRORS = 1.0


@dataclass(frozen=True)
class Candidate:
    """One candidate model: its validation top-5 hits (one bool per row), size and cost.

    ``family`` names a model family, or an ensemble's members joined by ``+``.
    """

    family: str
    hits: np.ndarray
    size_bytes: int  # in memory, at the size it would have on the whole training split
    fit_seconds: float
    within_budget: bool = True

    @property
    def accuracy(self) -> float:
        """Validation top-5 accuracy."""
        return float(np.mean(self.hits)) if len(self.hits) else 0.0

    @property
    def correct(self) -> int:
        """Validation rows whose category is in the top 5 (what ties are decided on: exact)."""
        return int(np.count_nonzero(self.hits))


@dataclass(frozen=True)
class Choice:
    """The chosen candidate and why."""

    family: str
    best_family: str  # the most accurate single candidate (within budget)
    margin: float  # for an ensemble: its paired gain over the best single, in standard errors (0 otherwise)
    reason: str


def paired_gap(best: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of (best hit - other hit) over the same rows."""
    difference = np.asarray(best, dtype=np.float64) - np.asarray(other, dtype=np.float64)
    if len(difference) < 2:
        return (float(difference.mean()) if len(difference) else 0.0), 0.0
    return float(difference.mean()), float(difference.std(ddof=1) / math.sqrt(len(difference)))


def choose(candidates: Sequence[Candidate], ensembles: Sequence[Candidate] = (),
           z: float = ENSEMBLE_STANDARD_ERRORS) -> Choice:
    """The most accurate candidate within its size budget (ties: the smaller, then the first listed).

    ``ensembles`` compete only when they beat the best single candidate by more than ``z``
    standard errors (paired). Candidates over their budget are left out unless none fits (then
    the smallest single candidate wins).
    """
    if not candidates:
        raise ValueError("choose needs at least one candidate")
    lengths = {len(candidate.hits) for candidate in (*candidates, *ensembles)}
    if len(lengths) != 1:
        raise ValueError(f"candidates must be scored on the same validation rows, found lengths {sorted(lengths)}")
    fitting = [candidate for candidate in candidates if candidate.within_budget]
    if not fitting:
        smallest = min(candidates, key=lambda candidate: candidate.size_bytes)  # min keeps the first of equals
        return Choice(smallest.family, smallest.family, 0.0,
                      f"no candidate fits the size budget: the smallest, {smallest.family} "
                      f"({smallest.size_bytes / 1e6:.1f} MB)")
    best = _most_accurate(fitting)
    earned = []
    for ensemble in ensembles:
        gain, error = paired_gap(ensemble.hits, best.hits)
        if ensemble.within_budget and gain > z * error + 1e-12:
            earned.append((ensemble, gain / error if error > 0 else math.inf))
    if earned:
        chosen, margin = max(earned, key=lambda pair: (pair[0].correct, -pair[0].size_bytes))
        return Choice(chosen.family, best.family, margin,
                      f"ensemble {chosen.family}: validation top-5 {chosen.accuracy:.4f}, above the best single "
                      f"candidate ({best.family} {best.accuracy:.4f}) by {margin:.1f} SE (more than {z:g} SE), "
                      f"{chosen.size_bytes / 1e6:.2f} MB")
    ties = sum(1 for candidate in fitting if candidate.correct == best.correct) - 1
    return Choice(best.family, best.family, 0.0,
                  f"{best.family}: the best validation top-5 ({best.accuracy:.4f}) within the size budget, "
                  f"{best.size_bytes / 1e6:.2f} MB" + (f", the smallest of {ties + 1} equals" if ties else ""))


def _most_accurate(candidates: Sequence[Candidate]) -> Candidate:
    # max keeps the first of equals: list the simpler families first.
    return max(candidates, key=lambda candidate: (candidate.correct, -candidate.size_bytes))


def ranked(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Candidates within budget, the most accurate first (ties: the smaller, then the first listed)."""
    fitting = [candidate for candidate in candidates if candidate.within_budget]
    order = sorted(range(len(fitting)), key=lambda index: (-fitting[index].correct, fitting[index].size_bytes, index))
    return [fitting[index] for index in order]
