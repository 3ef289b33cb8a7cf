"""The local stack without Docker, either profile: what `make init-airflow`, `start-airflow`, `stop-airflow` and
`e2e-airflow` run.

    python -m scripts.local_stack init     # AIRFLOW_HOME: airflow.cfg as the stack runs Airflow, db migrated
    python -m scripts.local_stack start    # everything in the background, waits until the servers answer
    python -m scripts.local_stack stop     # stops exactly the processes `start` started (SIGTERM)
    python -m scripts.local_stack e2e      # start, prove client_0's DAGs through the REST API, stop

``--profile standalone`` (the default; Airflow on SQLite, ``scripts/profiles/standalone.py``) or
``--profile celery`` (CeleryExecutor on PostgreSQL and Redis, ``scripts/profiles/celery.py``);
env ``PROFILE``. The proof is ``scripts/airflow_e2e.py``; the processes are started and stopped by
``scripts/supervisor.py``.
"""
import argparse
import os
import sys
from typing import Optional

from scripts import airflow_e2e
from scripts.profiles import celery, standalone

ACTIONS = {
    "standalone": {"init": standalone.init, "start": standalone.start, "stop": standalone.stop, "e2e": airflow_e2e.e2e},
    "celery": {"init": celery.start, "start": celery.start, "stop": celery.stop, "e2e": airflow_e2e.e2e_celery},
}


def main(argv: Optional[list[str]] = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("action", choices=("init", "start", "stop", "e2e"), help="what to do")
    parser.add_argument("--profile", choices=("standalone", "celery"), default=os.environ.get("PROFILE") or "standalone",
                        help="standalone (SQLite, the default) or celery (scripts/profiles/celery.py); env PROFILE")
    args = parser.parse_args(argv)
    ACTIONS[args.profile][args.action]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
