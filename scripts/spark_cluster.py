"""A Spark standalone cluster on loopback, run from the pip ``pyspark`` package (no Spark download).

    python -m scripts.spark_cluster start    # master spark://127.0.0.1:7077 (UI :8081) + 1 worker, 2 cores
    python -m scripts.spark_cluster status   # the master's view: alive workers, cores, applications
    python -m scripts.spark_cluster stop     # stops exactly the processes `start` started

``start --workers N --cores C --memory M --port P --webui-port W`` changes the shape (defaults
from ``SPARK_MASTER_PORT``, ``SPARK_MASTER_WEBUI_PORT``, ``SPARK_WORKER_INSTANCES``,
``SPARK_WORKER_CORES``, ``SPARK_WORKER_MEMORY`` when set). Every server binds to 127.0.0.1; the
master's REST submission server is off. Pids, logs, worker and executor folders are in
``.run/spark/``. Executors run the interpreter of this environment (``PYSPARK_PYTHON``).

From Python (tests), the same cluster as a context manager that stops everything on exit::

    port, webui_port = supervisor.free_ports(2)
    with start_cluster(workers=2, cores=1, port=port, webui_port=webui_port, run_dir=tmp) as cluster:
        ...  # SPARK_MASTER=cluster.master_url; cluster.state() is the master's JSON
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from scripts.supervisor import HOST, ProcessSpec, Running, StartError, Supervisor, alive, port_free

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run" / "spark"
STATE_FILE = "cluster.json"
MASTER_PORT = int(os.environ.get("SPARK_MASTER_PORT", "7077"))
MASTER_WEBUI_PORT = int(os.environ.get("SPARK_MASTER_WEBUI_PORT", "8081"))  # Airflow owns 8080
WORKERS = int(os.environ.get("SPARK_WORKER_INSTANCES", "1"))
WORKER_CORES = int(os.environ.get("SPARK_WORKER_CORES", "2"))
WORKER_MEMORY = os.environ.get("SPARK_WORKER_MEMORY", "2g")
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


class ClusterError(RuntimeError):
    """The cluster did not start (a process exited, or workers did not register in time)."""


@dataclass
class Cluster(Running):
    """A running master and its workers, each process the leader of its own process group, stopped on exit
    (the workers, then the master).

    A worker's group also holds the executor JVMs it launched; their Python workers lead groups
    of their own and exit as soon as their executor is gone.
    """

    master_url: str
    webui_url: str
    run_dir: Path
    supervisor: Supervisor

    @property
    def master(self) -> subprocess.Popen:
        """The master's process."""
        return self.supervisor.processes["master"]

    @property
    def workers(self) -> list[subprocess.Popen]:
        """The workers' processes."""
        return [process for name, process in self.supervisor.processes.items() if name.startswith("worker-")]

    def state(self, timeout: float = 5.0) -> dict[str, Any]:
        """The master's view (its web UI ``/json/``): ``aliveworkers``, ``workers``, ``activeapps``..."""
        return master_state(self.webui_url, timeout)

    def logs(self) -> list[Path]:
        """The log files of the master and the workers (executors log under ``work/``)."""
        return sorted(self.run_dir.glob("*.log"))



def spark_home() -> Path:
    """The pip ``pyspark`` package folder, a complete SPARK_HOME (``bin/spark-class``, ``jars/``)."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        raise ClusterError("pyspark is not installed in this environment (run `make init-pipenv`)")
    return Path(spec.origin).parent


def master_state(webui_url: str, timeout: float = 5.0) -> dict[str, Any]:
    """The master's JSON status at ``webui_url``."""
    with urllib.request.urlopen(f"{webui_url}/json/", timeout=timeout) as response:  # nosec: loopback only
        return json.loads(response.read())


def cluster_specs(*, workers: int, cores: int, memory: str, port: int, webui_port: int, run_dir: Path,
                  timeout: float) -> list[ProcessSpec]:
    """The master, then ``workers`` workers (free web UI ports); healthy once every worker has registered.

    Each daemon (spark-class execs into its JVM) and the executors it launches form one process group.
    """
    env = _env(run_dir)
    spark_class = str(spark_home() / "bin" / "spark-class")
    master_url, webui_url = f"spark://{HOST}:{port}", f"http://{HOST}:{webui_port}"

    def registered() -> bool:
        try:
            return int(master_state(webui_url, timeout=2)["aliveworkers"]) >= workers
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError, KeyError):
            return False

    master = ProcessSpec("master", [spark_class, MASTER_CLASS, "--host", HOST, "--port", str(port), "--webui-port",
                                    str(webui_port)], env, grace=20.0)
    return [master, *[ProcessSpec(f"worker-{number}", [spark_class, WORKER_CLASS, master_url, "--host", HOST, "--cores",
                                                       str(cores), "--memory", memory, "--webui-port", "0",
                                                       "--work-dir", str(run_dir / "work")], env, grace=20.0,
                                  **({"health": registered, "timeout": timeout} if number == workers else {}))
                      for number in range(1, workers + 1)]]


def stop_order(workers: int) -> list[tuple[str, ...]]:
    """Workers first (one after the other, as they were started), then the master."""
    return [(f"worker-{number}",) for number in range(1, workers + 1)] + [("master",)]


def start_cluster(*, workers: int = WORKERS, cores: int = WORKER_CORES, memory: str = WORKER_MEMORY,
                  port: int = MASTER_PORT, webui_port: int = MASTER_WEBUI_PORT, run_dir: Path = RUN_DIR,
                  timeout: float = 120.0) -> Cluster:
    """Start a master and ``workers`` workers on 127.0.0.1; return once all workers are registered.

    Workers take free ports (their web UIs are linked from the master's). On failure everything
    started is stopped and :class:`ClusterError` carries the log tails.
    """
    for wanted in (port, webui_port):
        if not port_free(wanted):
            raise ClusterError(f"port {wanted} on {HOST} is in use (a cluster already running? "
                               "`python -m scripts.spark_cluster status`)")
    run_dir.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(run_dir, stop_order(workers), quiet=True)
    cluster = Cluster(f"spark://{HOST}:{port}", f"http://{HOST}:{webui_port}", run_dir, supervisor)
    try:
        supervisor.start(cluster_specs(workers=workers, cores=cores, memory=memory, port=port, webui_port=webui_port,
                                       run_dir=run_dir, timeout=timeout))
    except StartError as exc:
        raise ClusterError(f"{workers} worker(s) did not all register with {cluster.master_url}: "
                           f"{str(exc).splitlines()[0]}\n{_log_tails(cluster)}") from None
    return cluster


def start(workers: int = WORKERS, cores: int = WORKER_CORES, memory: str = WORKER_MEMORY, port: int = MASTER_PORT,
          webui_port: int = MASTER_WEBUI_PORT) -> None:
    """Start the cluster in the background (it outlives this command) and record it in .run/spark/."""
    recorded = _recorded()
    if recorded and any(Supervisor(RUN_DIR).running(name) for name in recorded["names"]):
        print(f"Spark cluster already running: {recorded['master_url']} (UI {recorded['webui_url']})")
        return
    try:
        cluster = start_cluster(workers=workers, cores=cores, memory=memory, port=port, webui_port=webui_port)
    except ClusterError as exc:
        raise SystemExit(f"spark cluster: {exc}") from None
    (RUN_DIR / STATE_FILE).write_text(json.dumps({"master_url": cluster.master_url, "webui_url": cluster.webui_url,
                                                  "names": list(cluster.supervisor.specs)}, indent=2), encoding="utf-8")
    print(f"Spark master: {cluster.master_url}  ({workers} worker(s) x {cores} core(s), {memory} each)\n"
          f"Master UI:    {cluster.webui_url}\nLogs:         {RUN_DIR}/*.log, executors in {RUN_DIR / 'work'}\n"
          f"Use it:       SPARK_MASTER={cluster.master_url} pipenv run python categories_classification_cli.py predictor ...")


def stop() -> None:
    """Stop the process groups recorded by ``start`` (workers first, then the master), and nothing else."""
    recorded = _recorded()
    if not recorded:
        print(f"no Spark cluster recorded in {RUN_DIR}")
        return
    supervisor = Supervisor(RUN_DIR, stop_order(len(recorded["names"]) - 1))
    for name in recorded["names"]:
        pid = supervisor.pid(name)
        if pid is not None and not _is_spark_daemon(pid):  # gone already, or the pid now belongs to something else
            print(f"{name} (pid {pid}) was not running")
            supervisor.pid_file(name).unlink()
    supervisor.stop()
    (RUN_DIR / STATE_FILE).unlink()


def status() -> int:
    """Print the recorded cluster's state as its master sees it; 0 when it answers, 1 otherwise."""
    recorded = _recorded()
    if not recorded:
        print(f"no Spark cluster recorded in {RUN_DIR} (start one with `make spark-cluster`)")
        return 1
    try:
        state = master_state(recorded["webui_url"])
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        print(f"Spark master {recorded['master_url']} does not answer at {recorded['webui_url']} ({exc}); "
              f"see {RUN_DIR}/master.log")
        return 1
    print(f"Spark master {state['url']}: {state['status']}, UI {recorded['webui_url']}\n"
          f"workers alive: {state['aliveworkers']}, cores {state['coresused']}/{state['cores']} used, "
          f"memory {state['memoryused']}/{state['memory']} MiB used")
    for app in state["activeapps"]:
        print(f"running application {app['id']} ({app['name']}): {app['cores']} core(s)")
    return 0


def _env(run_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SPARK_HOME=str(spark_home()),
        SPARK_LOCAL_IP=HOST,
        # The folders executors use for shuffle and spill files: with the rest, not in /tmp.
        SPARK_LOCAL_DIRS=str(run_dir / "local"),
        # Executors' Python workers run this environment (the driver's PYSPARK_PYTHON wins).
        PYSPARK_PYTHON=os.environ.get("PYSPARK_PYTHON", sys.executable),
        # A busy port is an error, not a silent move to the next one; no REST submission server.
        SPARK_MASTER_OPTS=f"{os.environ.get('SPARK_MASTER_OPTS', '')} -Dspark.port.maxRetries=0 "
                          "-Dspark.master.rest.enabled=false".strip(),
    )
    return env


def _log_tails(cluster: Cluster, chars: int = 1500) -> str:
    tails = []
    for log in cluster.logs():
        text = log.read_text(encoding="utf-8", errors="replace")
        tails.append(f"--- {log} (end)\n{text[-chars:]}")
    return "\n".join(tails)


def _is_spark_daemon(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return alive(pid)  # no /proc: trust the pid file
    return MASTER_CLASS.encode() in command or WORKER_CLASS.encode() in command


def _recorded() -> Optional[dict[str, Any]]:
    path = RUN_DIR / STATE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def main(argv: Optional[list[str]] = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("action", choices=("start", "stop", "status"), help="what to do")
    parser.add_argument("--workers", type=int, default=WORKERS, help=f"number of workers (default: {WORKERS})")
    parser.add_argument("--cores", type=int, default=WORKER_CORES, help=f"cores per worker (default: {WORKER_CORES})")
    parser.add_argument("--memory", default=WORKER_MEMORY, help=f"memory per worker for executors (default: {WORKER_MEMORY})")
    parser.add_argument("--port", type=int, default=MASTER_PORT, help=f"master port (default: {MASTER_PORT})")
    parser.add_argument("--webui-port", type=int, default=MASTER_WEBUI_PORT,
                        help=f"master web UI port (default: {MASTER_WEBUI_PORT})")
    args = parser.parse_args(argv)
    if args.action == "start":
        start(args.workers, args.cores, args.memory, args.port, args.webui_port)
        return 0
    if args.action == "stop":
        stop()
        return 0
    return status()


if __name__ == "__main__":
    sys.exit(main())
