"""The Airflow processes both local-stack profiles run, each one started on its own, none serving logs.

Airflow's scheduler (for LocalExecutor), triggerer and Celery workers start a log server for an
API server on another machine, on all interfaces (8793, 8794) whatever the settings say:
``airflow/utils/serve_logs/core.py`` binds ``host=""``, and ``airflow standalone`` has no way to
skip it. A stack's processes share one machine and one ``logs/`` folder, which the API server
reads itself, so both profiles run the components with ``--skip-serve-logs``: the API server, on
127.0.0.1, is Airflow's only listening socket.
"""

# Stopped in two steps, each step's processes at once: the scheduler (its executor's workers run
# the tasks), the DAG processor and the triggerer; then the API server (a stopping task still
# reports its state to it).
STOP_STEPS = (("scheduler", "dag-processor", "triggerer"), ("api-server",))
AIRFLOW_PROCESSES = tuple(name for step in STOP_STEPS for name in step)
# Seconds SIGTERM goes to each component alone before its whole process group gets it: a component
# stops its children itself (the triggerer its trigger runner, in about a second; it waited 10 s
# when the runner had the group's SIGTERM too), and the scheduler, which would wait for its
# executor's running tasks, hands them the group's SIGTERM after this.
LEADERS_FIRST = 5.0


def commands(airflow: str, host: str, port: int) -> dict[str, list[str]]:
    """The command of each of :data:`AIRFLOW_PROCESSES` in starting order (``airflow``: the executable; the
    API server on ``host:port``, first: the others' tasks report to it)."""
    return {
        "api-server": [airflow, "api-server", "--host", host, "--port", str(port)],
        "scheduler": [airflow, "scheduler", "--skip-serve-logs"],
        "dag-processor": [airflow, "dag-processor"],
        "triggerer": [airflow, "triggerer", "--skip-serve-logs"],
    }
