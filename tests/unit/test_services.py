"""scripts/services.py and the Celery profile's start-up faults: a database or broker that does not answer is one
line naming the service and its address, credentials masked, and what to do (no server started here)."""
import pytest

from scripts import celery_stack, services

SECRET = "s3cr3t-Pa55"


def test_credentials_are_masked_and_the_driver_named_for_sqlalchemy():
    assert services.mask(f"postgresql://categories:{SECRET}@127.0.0.1:5433/mlflow") == \
        "postgresql://***@127.0.0.1:5433/mlflow"
    assert services.mask(f"redis://:{SECRET}@127.0.0.1:6380/0") == "redis://***@127.0.0.1:6380/0"
    assert services.mask("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert services.sqlalchemy_url("postgresql://u:p@h:1/d") == "postgresql+psycopg2://u:p@h:1/d"
    assert services.sqlalchemy_url("postgresql+psycopg2://u:p@h:1/d") == "postgresql+psycopg2://u:p@h:1/d"


@pytest.mark.parametrize("down, expected", [
    ("postgres", "PostgreSQL at postgresql://***@127.0.0.1:1/postgres does not answer: start it, or fix "
                 "CATEGORIES_POSTGRES_URL"),
    ("redis", "Redis at redis://***@127.0.0.1:1/0 does not answer: start it, or fix CATEGORIES_REDIS_URL"),
])
def test_an_existing_server_that_does_not_answer_stops_the_start_on_one_masked_line(down, expected, tmp_path,
                                                                                    monkeypatch, capsys):
    if down == "redis":  # the database is checked first: here it answers, only the broker is down
        monkeypatch.setattr(services, "_postgres_ready", lambda server: True)
        monkeypatch.setattr(services.Postgres, "create_database", lambda self, name: self.database_url(name))
    stack = celery_stack.CeleryStack(celery_stack.Settings(
        run_dir=tmp_path / "run", postgres_url=f"postgresql://categories:{SECRET}@127.0.0.1:1/postgres",
        redis_url=f"redis://:{SECRET}@127.0.0.1:1/0"))
    with pytest.raises(services.ServiceError) as raised:
        stack.start()
    assert str(raised.value) == expected
    assert SECRET not in str(raised.value) + capsys.readouterr().out
    assert not list((tmp_path / "run").glob("*.pid"))  # nothing was started, nothing is left to stop
