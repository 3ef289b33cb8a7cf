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

    with start_service(port=free_ports(1)[0], run_dir=tmp) as service:
        ...  # SPARK_REMOTE=service.url
"""
import argparse
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from categories_classification.prediction.spark import DEFAULT_CONF
from scripts._processes import alive, spawn_detached, stop_group
from scripts.spark_cluster import port_free, spark_home

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run" / "spark-connect"
HOST = "127.0.0.1"
PORT = int(os.environ.get("SPARK_CONNECT_PORT", "15002"))
MASTER = os.environ.get("SPARK_CONNECT_MASTER", "local[*]")
SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
# A first job with a Python function: the JVM's lazy set-up and the Python worker daemon are paid
# here, not by the first client.
_WARM_UP = ("import sys; from pyspark.sql import SparkSession; "
            "SparkSession.builder.remote(sys.argv[1]).getOrCreate().range(1)"
            ".mapInArrow(lambda batches: (batch for batch in batches), 'id long').collect()")


class ServiceError(RuntimeError):
    """The service did not start (the process exited, or it did not answer in time)."""


@dataclass
class Service:
    """A running Spark Connect server (the leader of its own process group)."""

    url: str
    port: int
    log: Path
    process: subprocess.Popen

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the server's group, SIGKILL after ``grace`` seconds."""
        stop_group(self.process.pid, grace, self.process.poll)

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_service(*, port: int = PORT, master: str = MASTER, run_dir: Path = RUN_DIR, timeout: float = 120.0) -> Service:
    """Start the server on 127.0.0.1:``port`` and return once it runs Spark jobs (the first one warms it up)."""
    if not port_free(port):
        raise ServiceError(f"port {port} on {HOST} is in use (a service already running? "
                           "`python -m scripts.spark_connect status`)")
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "spark-connect.log"
    process = spawn_detached(server_command(port, master), log, server_env(run_dir), ROOT)
    service = Service(f"sc://{HOST}:{port}", port, log, process)
    try:
        wait_until_serving(port, process, log, timeout)
    except BaseException:
        service.stop(grace=10)
        raise
    return service


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
    pid_file = RUN_DIR / "spark-connect.pid"
    if pid_file.exists() and alive(int(pid_file.read_text(encoding="utf-8"))):
        print(f"Spark Connect already running (pid {pid_file.read_text(encoding='utf-8')})")
        return
    try:
        service = start_service(port=port, master=master)
    except ServiceError as exc:
        raise SystemExit(f"spark connect: {exc}") from None
    pid_file.write_text(str(service.process.pid), encoding="utf-8")
    print(f"Spark Connect: {service.url} (jobs on {master}); log {service.log}\n"
          f"Use it:        SPARK_REMOTE={service.url} pipenv run python categories_classification_cli.py predictor ...")


def stop() -> None:
    """Stop the process group recorded by ``start``, and nothing else."""
    pid_file = RUN_DIR / "spark-connect.pid"
    if not pid_file.exists():
        print(f"no Spark Connect service recorded in {RUN_DIR}")
        return
    pid = int(pid_file.read_text(encoding="utf-8"))
    if _is_server(pid):
        print(f"{'stopped' if stop_group(pid, 20.0) else 'killed'} Spark Connect (pid {pid})")
    else:
        print(f"Spark Connect (pid {pid}) was not running")
    pid_file.unlink()


def status(port: int = PORT) -> int:
    """0 if a service answers on ``port``, 1 otherwise."""
    if answers(port):
        print(f"Spark Connect answers at sc://{HOST}:{port}")
        return 0
    print(f"no Spark Connect service at sc://{HOST}:{port} (start it with `python -m scripts.spark_connect start`)")
    return 1


def answers(port: int, timeout: float = 2.0) -> bool:
    """True if something accepts connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def server_env(run_dir: Path) -> dict[str, str]:
    """The server's environment: this project's interpreter for its Python workers, scratch in ``run_dir``."""
    env = dict(os.environ)
    env.pop("SPARK_REMOTE", None)  # the server is the one place that must not connect to itself
    env.update(SPARK_HOME=str(spark_home()), SPARK_LOCAL_IP=HOST, SPARK_LOCAL_DIRS=str(run_dir / "local"),
               # The service's Python workers run this environment (numpy, sklearn, skops).
               PYSPARK_PYTHON=os.environ.get("PYSPARK_PYTHON", sys.executable))
    return env


def wait_until_serving(port: int, process: Optional[subprocess.Popen], log: Path, timeout: float) -> None:
    """Return once the server on ``port`` has run a first job; :class:`ServiceError` if it exits or stays silent."""
    deadline = time.monotonic() + timeout
    url = f"sc://{HOST}:{port}"
    while not answers(port, timeout=1.0):
        if process is not None and process.poll() is not None:
            raise ServiceError(f"spark-submit exited with code {process.returncode}: {_tail(log)}")
        if time.monotonic() > deadline:
            raise ServiceError(f"nothing answered on {url} within {timeout:.0f}s: {_tail(log)}")
        time.sleep(0.5)
    # In a process of its own: a process that already runs a classic session may not open a Connect one.
    warm = subprocess.run([sys.executable, "-c", _WARM_UP, url], capture_output=True, text=True, check=False,
                          timeout=max(10.0, deadline - time.monotonic()))
    if warm.returncode != 0:
        raise ServiceError(f"the service at {url} answers but could not run a first job: {warm.stderr[-1500:]}")


def _tail(log: Path, chars: int = 1500) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-chars:] if log.exists() else "(no log)"


def _is_server(pid: int) -> bool:
    try:
        return SERVER_CLASS.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return alive(pid)


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
