"""A long-running Spark Connect service on loopback, from the pip ``pyspark`` package (no Spark download).

    python -m scripts.spark_connect start    # sc://127.0.0.1:15002, Spark in local[*] mode behind it
    python -m scripts.spark_connect status   # answers or not
    python -m scripts.spark_connect stop     # stops exactly the process `start` started

Prediction commands given ``SPARK_REMOTE=sc://127.0.0.1:15002`` share this one JVM instead of
starting their own: a client's DAG run then pays for its Python process, not for a Spark start.
``start --port P --master M`` (defaults ``SPARK_CONNECT_PORT``, ``SPARK_CONNECT_MASTER``) changes
where it listens and where it runs its jobs (e.g. ``spark://127.0.0.1:7077``, the loopback
cluster). The pid file and the log are in ``.run/spark-connect/``.

From Python (tests), the same service as a context manager that stops it on exit::

    with start_service(port=supervisor.free_port(), run_dir=tmp) as service:
        ...  # SPARK_REMOTE=service.url
"""
import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from categories_classification.prediction.spark import DEFAULT_CONF
from scripts.spark_cluster import spark_home
from scripts.supervisor import HOST, ProcessSpec, Running, StartError, Supervisor, alive, answers, port_free

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run" / "spark-connect"
NAME = "spark-connect"  # its pid file and log in the run folder
PORT = int(os.environ.get("SPARK_CONNECT_PORT", "15002"))
MASTER = os.environ.get("SPARK_CONNECT_MASTER", "local[*]")
SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
# A first job in the session the prediction commands of this package will share today (see
# categories_classification.prediction.spark): the JVM's lazy set-up, the package's upload and the session's
# Python workers with their imports (numpy, pyarrow, sklearn through skops) are paid here, not by the first client.
_WARM_UP = """
import os
from categories_classification.prediction.spark import get_spark, warm_workers

warm_workers(get_spark(), os.cpu_count() or 1)
"""


class ServiceError(RuntimeError):
    """The service did not start (the process exited, or it did not answer in time)."""


@dataclass
class Service(Running):
    """A running Spark Connect server (the leader of its own process group), stopped on exit."""

    url: str
    port: int
    log: Path
    supervisor: Supervisor
    names: tuple[str, ...] = (NAME,)


def server_spec(port: int, master: str, scratch: Path, timeout: float = 180.0) -> ProcessSpec:
    """The Spark Connect server on 127.0.0.1:``port`` running its jobs on ``master``, scratch files in ``scratch``:
    healthy once it accepts connections and has run a first job."""
    return ProcessSpec(NAME, server_command(port, master), server_env(scratch), health=lambda: answers(port),
                       timeout=timeout, ready=lambda: _warm_up(port, timeout), grace=20.0)


def start_service(*, port: int = PORT, master: str = MASTER, run_dir: Path = RUN_DIR, timeout: float = 120.0,
                  supervisor: Optional[Supervisor] = None) -> Service:
    """Start the server on 127.0.0.1:``port`` and return once it runs Spark jobs (the first one warms it up)."""
    if not port_free(port):
        raise ServiceError(f"port {port} on {HOST} is in use (a service already running? "
                           "`python -m scripts.spark_connect status`)")
    supervisor = supervisor or Supervisor(run_dir, quiet=True)
    try:
        supervisor.start([server_spec(port, master, run_dir, timeout)])
    except StartError as exc:
        raise ServiceError(str(exc)) from None
    return Service(f"sc://{HOST}:{port}", port, supervisor.log(NAME), supervisor)


def server_command(port: int, master: str) -> list[str]:
    """The Spark Connect server on 127.0.0.1:``port``, running its jobs on ``master``, quiet like the CLI."""
    command = [str(spark_home() / "bin" / "spark-submit"), "--class", SERVER_CLASS, "--name", "categories Spark Connect",
               "--master", master, "--conf", f"spark.connect.grpc.binding.address={HOST}",
               "--conf", f"spark.connect.grpc.binding.port={port}", "--conf", "spark.driver.host=127.0.0.1",
               "--conf", "spark.driver.bindAddress=127.0.0.1"]
    for key, value in DEFAULT_CONF.items():
        command += ["--conf", f"{key}={value}"]
    return command


def start(port: int = PORT, master: str = MASTER) -> None:
    """Start the service in the background (it outlives this command) and record its pid in .run/."""
    supervisor = Supervisor(RUN_DIR)
    if supervisor.running(NAME):
        print(f"Spark Connect already running (pid {supervisor.pid(NAME)})")
        return
    try:
        service = start_service(port=port, master=master, supervisor=supervisor)
    except ServiceError as exc:
        raise SystemExit(f"spark connect: {exc}") from None
    print(f"Spark Connect: {service.url} (jobs on {master}); log {service.log}\n"
          f"Use it:        SPARK_REMOTE={service.url} pipenv run python categories_classification_cli.py predictor ...")


def stop() -> None:
    """Stop the process group recorded by ``start``, and nothing else."""
    supervisor = Supervisor(RUN_DIR, [(NAME,)])
    pid = supervisor.pid(NAME)
    if pid is None:
        print(f"no Spark Connect service recorded in {RUN_DIR}")
        return
    if not _is_server(pid):  # the pid now belongs to something else
        print(f"Spark Connect (pid {pid}) was not running")
        supervisor.pid_file(NAME).unlink()
        return
    supervisor.stop()


def status(port: int = PORT) -> int:
    """0 if a service answers on ``port``, 1 otherwise."""
    if answers(port):
        print(f"Spark Connect answers at sc://{HOST}:{port}")
        return 0
    print(f"no Spark Connect service at sc://{HOST}:{port} (start it with `python -m scripts.spark_connect start`)")
    return 1


def server_env(run_dir: Path) -> dict[str, str]:
    """The server's environment: this project's interpreter for its Python workers, scratch in ``run_dir``."""
    env = dict(os.environ)
    env.pop("SPARK_REMOTE", None)  # the server is the one place that must not connect to itself
    env.update(SPARK_HOME=str(spark_home()), SPARK_LOCAL_IP=HOST, SPARK_LOCAL_DIRS=str(run_dir / "local"),
               # The service's Python workers run this environment (numpy, sklearn, skops).
               PYSPARK_PYTHON=os.environ.get("PYSPARK_PYTHON", sys.executable))
    return env


def _warm_up(port: int, timeout: float) -> None:
    """Run a first job in the package's shared session on the server (:class:`StartError` if it cannot)."""
    url = f"sc://{HOST}:{port}"
    # In a process of its own: a process that already runs a classic session may not open a Connect one.
    warm = subprocess.run([sys.executable, "-c", _WARM_UP], capture_output=True, text=True, check=False, cwd=ROOT,
                          env=dict(os.environ, SPARK_REMOTE=url), timeout=max(10.0, timeout))
    if warm.returncode != 0:
        raise StartError(f"the service at {url} answers but could not run a first job: {warm.stderr[-1500:]}")


def _is_server(pid: int) -> bool:
    try:
        return SERVER_CLASS.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return alive(pid)  # no /proc: trust the pid file


def main(argv: Optional[list[str]] = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("action", choices=("start", "stop", "status"), help="what to do")
    parser.add_argument("--port", type=int, default=PORT, help=f"port on {HOST} (default: {PORT})")
    parser.add_argument("--master", default=MASTER, help=f"where the service runs its jobs (default: {MASTER})")
    args = parser.parse_args(argv)
    if args.action == "start":
        start(args.port, args.master)
        return 0
    if args.action == "stop":
        stop()
        return 0
    return status(args.port)


if __name__ == "__main__":
    sys.exit(main())
