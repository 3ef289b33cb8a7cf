"""The local stacks as data: each profile is a list of :class:`scripts.supervisor.ProcessSpec` plus its settings.

    standalone.py   Airflow on SQLite (LocalExecutor), MLflow on SQLite, Spark Connect: `make start-airflow`
    celery.py       Airflow with CeleryExecutor on PostgreSQL + Redis, two Celery workers: `PROFILE=celery`
    airflow.py      what both Airflow profiles share: components, stop steps, environment, parsing settings
    mlflow.py       the one MLflow server command (stacks, test servers, benchmarks)
    test_servers.py the MLflow server the tests and benchmarks start and stop (outages included)

The Spark Connect service and the Spark standalone cluster are ``scripts/spark_connect.py`` and
``scripts/spark_cluster.py`` (their specs and command lines); the PostgreSQL and Redis servers
are ``scripts/services.py``. Every profile is started and stopped by ``scripts/supervisor.py``.
"""
