"""The suite's own layout: what `make test` relies on to spread the files over xdist workers."""
from tests.conftest import AIRFLOW_STACK_FILES
from tests.helpers import ROOT


def test_every_airflow_stack_file_exists_and_starts_a_stack():
    # A renamed file would silently leave the group and run beside another stack again.
    for name in AIRFLOW_STACK_FILES:
        text = (ROOT / name).read_text(encoding="utf-8")
        assert "CeleryStack" in text or "standalone" in text or "airflow_e2e" in text, name
