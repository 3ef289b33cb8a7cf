"""The promotion gate (pure): does a newly trained version take the ``champion`` alias?

The new version (challenger) and the current champion are scored on the same rows (the new
run's held-out test split) with top-5 accuracy. The challenger is promoted unless it is worse
than the champion by more than ``tolerance``; the first version of a model is always promoted.
"""
from dataclasses import dataclass
from typing import Optional

DEFAULT_TOLERANCE = 0.01  # one point of top-5 accuracy: below the noise of a retraining


@dataclass(frozen=True)
class Decision:
    """Outcome of the gate, with the scores it was based on (recorded on the training run)."""

    promote: bool
    reason: str
    challenger_score: float
    champion_score: Optional[float] = None
    champion_version: Optional[int] = None
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def label(self) -> str:
        """``promoted`` or ``rejected``, as tagged on the run."""
        return "promoted" if self.promote else "rejected"


def decide(challenger_score: float, champion_score: Optional[float], champion_version: Optional[int],
           tolerance: float = DEFAULT_TOLERANCE) -> Decision:
    """Apply the gate; ``champion_score`` is None when there is no champion to beat."""
    if champion_version is None or champion_score is None:
        return Decision(True, "first version: no champion yet", challenger_score, None, champion_version, tolerance)
    margin = challenger_score - champion_score
    if margin >= -tolerance - 1e-12:  # scores are sums of 1/n: compare with a float margin
        reason = (f"top-5 accuracy {challenger_score:.4f} vs champion v{champion_version} {champion_score:.4f} "
                  f"(within tolerance {tolerance:.4f})")
        return Decision(True, reason, challenger_score, champion_score, champion_version, tolerance)
    reason = (f"top-5 accuracy {challenger_score:.4f} is {-margin:.4f} below champion v{champion_version} "
              f"{champion_score:.4f} (tolerance {tolerance:.4f})")
    return Decision(False, reason, challenger_score, champion_score, champion_version, tolerance)
