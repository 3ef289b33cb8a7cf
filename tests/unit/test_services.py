"""scripts/services.py and the Celery profile's start-up faults: a database or broker that does not answer is one
line naming the service and its address, credentials masked, and what to do (no server started here); the
Celery profile's Airflow environment (the caller's settings win, as on the standalone profile)."""
import pytest

from scripts import services
from scripts.profiles import celery

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
    stack = celery.CeleryStack(celery.Settings(
        run_dir=tmp_path / "run", postgres_url=f"postgresql://categories:{SECRET}@127.0.0.1:1/postgres",
        redis_url=f"redis://:{SECRET}@127.0.0.1:1/0"))
    with pytest.raises(services.ServiceError) as raised:
        stack.start()
    assert str(raised.value) == expected
    assert SECRET not in str(raised.value) + capsys.readouterr().out
    assert not list((tmp_path / "run").glob("*.pid"))  # nothing was started, nothing is left to stop


def test_the_celery_profiles_airflow_env_keeps_the_callers_airflow_settings_and_sets_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(services, "existing_postgres", lambda url: services.Postgres("PostgreSQL", url, tmp_path))
    monkeypatch.setattr(services, "existing_redis", lambda url: services.Server("Redis", url, tmp_path))
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "7")
    monkeypatch.setenv("AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT", "20")
    stack = celery.CeleryStack(celery.Settings(
        run_dir=tmp_path, airflow_port=18080, mlflow_port=15000, postgres_url=f"postgresql://u:{SECRET}@127.0.0.1:1/postgres",
        redis_url=f"redis://:{SECRET}@127.0.0.1:1/0", extra_env={"AIRFLOW__CORE__PARALLELISM": "3"}))
    env = stack.airflow_env()

    assert env["AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL"] == "7"  # dropped before: the profile's own won
    assert env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"] == "20"
    assert env["AIRFLOW__CORE__PARALLELISM"] == "3"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:15000"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"postgresql+psycopg2://u:{SECRET}@127.0.0.1:1/airflow"
