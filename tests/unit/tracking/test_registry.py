"""champion-from-run's decision from what the champion's training recorded (no store)."""
import pytest

from categories_classification.records import TrainingRecord
from categories_classification.tracking.registry import ChampionSource, ModelRef

CHAMPION = ModelRef("c1", "c1_model", 3, "run3", "")
DAG_RUN = ("c1_training", "scheduled__2026-11-23")


def _source(decision: str, dag_run=DAG_RUN) -> ChampionSource:
    return ChampionSource(CHAMPION, TrainingRecord("c1", "2026-11-23", promotion_decision=decision, dag_run=dag_run),
                          *DAG_RUN)


def test_the_dag_runs_own_promoted_training_is_published():
    found = _source("promoted")
    assert found.promoted_by_dag_run and found.source == "c1_training run scheduled__2026-11-23"


@pytest.mark.parametrize("found", [
    _source("rejected"),  # it trained, but lost the gate
    _source("promoted", ("c1_training", "manual__other")),  # another run's champion since
    _source("promoted", (None, None)),  # promoted outside Airflow
    ChampionSource(None, None, *DAG_RUN),  # no champion at all
], ids=["rejected", "another run", "not airflow", "no champion"])
def test_anything_else_is_not_published(found):
    assert not found.promoted_by_dag_run


def test_a_champion_trained_outside_airflow_says_so():
    assert _source("promoted", (None, None)).source == "(not Airflow) run -"
