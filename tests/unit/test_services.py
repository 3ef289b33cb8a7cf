"""scripts/services.py and the Celery profile's start-up faults: a database or broker that does not answer is one
line naming the service and its address, credentials masked, and what to do (no server started here); the
Celery profile's Airflow environment (the caller's settings win, as on the standalone profile)."""
import json
import os
import subprocess
import sys

import pytest

from scripts import services
from scripts.profiles import celery
from scripts.supervisor import free_port

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


def test_the_throwaway_redis_keeps_its_queue_across_a_restart_in_an_append_only_file(tmp_path):
    lines = services.redis_config(tmp_path, 6399, SECRET).splitlines()
    # Every write is in the append-only file, fsynced, before Redis acknowledges it (issue #25, case 6).
    assert "appendonly yes" in lines and "appendfsync always" in lines
    assert {f"bind {services.HOST}", "port 6399", f"dir {tmp_path}", "protected-mode yes",
            f"requirepass {SECRET}", "daemonize no"} <= set(lines)


def test_start_redis_writes_that_config_readable_by_its_owner_only(tmp_path, monkeypatch):
    started = {}
    monkeypatch.setattr(services, "redis_available", lambda: True)
    monkeypatch.setattr(services, "_started", lambda server, command, *rest: started.update(command=command) or server)
    port = free_port()
    server = services.start_redis(run_dir=tmp_path, port=port)
    config = tmp_path / "redis.conf"
    password = (tmp_path / "password").read_text(encoding="utf-8").strip()
    assert started["command"] == ["redis-server", str(config)]  # the password is in the file, not on the command line
    assert config.read_text(encoding="utf-8") == services.redis_config(tmp_path, port, password)
    assert config.stat().st_mode & 0o777 == 0o600
    assert server.url == f"redis://:{password}@127.0.0.1:{port}/0"


def test_the_celery_profile_bounds_a_lost_broker_and_the_callers_settings_win(tmp_path, monkeypatch):
    monkeypatch.setattr(services, "existing_postgres", lambda url: services.Postgres("PostgreSQL", url, tmp_path))
    monkeypatch.setattr(services, "existing_redis", lambda url: services.Server("Redis", url, tmp_path))
    for key in celery.broker_recovery():
        monkeypatch.delenv(key, raising=False)
    settings = celery.Settings(run_dir=tmp_path, postgres_url="postgresql://u:p@127.0.0.1:1/postgres",
                               redis_url="redis://:p@127.0.0.1:1/0")
    env = celery.CeleryStack(settings).airflow_env()

    # A lost message is requeued within 5.5 minutes (Airflow's defaults: up to 12).
    assert float(env["AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT"]) + \
        float(env["AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL"]) <= 330
    # Every broker socket has a deadline; workers retry the broker at start-up; a publish outlives ~30 s down.
    assert env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__SOCKET_CONNECT_TIMEOUT"] == "10"
    assert env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__SOCKET_TIMEOUT"] == "30"
    assert env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"] == "86400"
    assert env["AIRFLOW__CELERY__BROKER_CONNECTION_RETRY_ON_STARTUP"] == "True"
    assert env["AIRFLOW__CELERY__TASK_PUBLISH_MAX_RETRIES"] == "30"
    assert json.loads(env["AIRFLOW__CELERY__EXTRA_CELERY_CONFIG"])["task_publish_retry_policy"]["max_retries"] == 100

    monkeypatch.setenv("AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT", "900")
    monkeypatch.setenv("AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT", "7200")
    env = celery.CeleryStack(settings).airflow_env()
    assert env["AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT"] == "900"
    assert env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"] == "7200"
    assert env["AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL"] == "30"


def test_airflow_reads_the_profiles_broker_settings_under_these_names(tmp_path):
    """The names are Airflow 3's and its Celery provider's: the Celery app of the workers and the scheduler gets
    them (read in a process of its own, as Airflow reads its configuration once, in a home of its own)."""
    env = {**{key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")},
           **celery.broker_recovery(), "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CELERY__BROKER_URL": "redis://:p@h:1/0"}
    script = ("import json\n"
              "from airflow.configuration import conf\n"
              "from airflow.providers.celery.executors.default_celery import get_default_celery_config\n"
              "config = get_default_celery_config(conf)\n"
              "print(json.dumps({'transport': config['broker_transport_options'],\n"
              "                  'retry_on_startup': config['broker_connection_retry_on_startup'],\n"
              "                  'publish_policy': config['task_publish_retry_policy'],\n"
              "                  'publish_retries': conf.getint('celery', 'task_publish_max_retries'),\n"
              "                  'queued': [conf.getfloat('scheduler', 'task_queued_timeout'),\n"
              "                             conf.getfloat('scheduler', 'task_queued_timeout_check_interval')]}))\n")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found == {"transport": {"visibility_timeout": 86400, "socket_connect_timeout": 10, "socket_timeout": 30,
                                   "socket_keepalive": True},
                     "retry_on_startup": True,
                     "publish_policy": {"max_retries": 100, "interval_start": 0, "interval_step": 0.2,
                                        "interval_max": 0.5},
                     "publish_retries": 30, "queued": [300.0, 30.0]}
