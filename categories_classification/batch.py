"""All clients of a config in one command: one failing client never stops the others."""
import time
from dataclasses import dataclass
from typing import Callable, Optional, Union

from categories_classification.config import ClientsConfig
from categories_classification.errors import CategoriesError
from categories_classification.predictor import PredictionResult, predict_categories
from categories_classification.spark import get_spark
from categories_classification.trainer import TrainingResult, train_model


@dataclass(frozen=True)
class Outcome:
    """The result of one client's step, or the one-line error that stopped it."""

    client_id: str
    seconds: float
    result: Optional[Union[TrainingResult, PredictionResult]] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        """True when the client's step succeeded."""
        return self.error is None


def train_all(config: ClientsConfig, training_date: str,
              on_done: Optional[Callable[[Outcome], None]] = None) -> list[Outcome]:
    """Train every client of ``config`` (sorted by id); errors are recorded, not raised."""
    return [
        _run(client.client_id, lambda c=client: train_model(
            c.client_id, c.features, c.params, training_date, promotion_tolerance=c.promotion_tolerance), on_done)
        for client in config
    ]


def predict_all(config: ClientsConfig, inference_date: str,
                on_done: Optional[Callable[[Outcome], None]] = None) -> list[Outcome]:
    """Predict every client of ``config`` in one Spark session; errors are recorded, not raised."""
    spark = get_spark()
    return [
        _run(client.client_id, lambda c=client: predict_categories(c.client_id, inference_date, spark=spark), on_done)
        for client in config
    ]


def _run(client_id: str, step: Callable[[], Union[TrainingResult, PredictionResult]],
         on_done: Optional[Callable[[Outcome], None]]) -> Outcome:
    started = time.perf_counter()
    try:
        outcome = Outcome(client_id, 0.0, result=step())
    except CategoriesError as exc:
        outcome = Outcome(client_id, 0.0, error=str(exc))
    outcome = Outcome(client_id, time.perf_counter() - started, outcome.result, outcome.error)
    if on_done is not None:
        on_done(outcome)
    return outcome
