"""The servers the tests and benchmarks start for themselves: an MLflow server on a free loopback port."""
import signal
from pathlib import Path
from typing import Optional

from scripts.profiles import mlflow
from scripts.supervisor import HOST, Supervisor, free_port


class MlflowServer:
    """A real `mlflow server` on a free loopback port, over a SQLite store (or ``backend_uri``), artifacts in ``root``.

    ``stop()`` and ``start()`` again (same port, same store) simulate an outage and recovery; as a
    context manager it is stopped on exit.
    """

    NAME = "mlflow_server"  # its log: root/mlflow_server.log

    def __init__(self, root: Path, backend_uri: Optional[str] = None, timeout: float = 180.0) -> None:
        self.port = free_port()
        self.root = root
        self.url = f"http://{HOST}:{self.port}"
        self.backend_uri = backend_uri or f"sqlite:///{root / 'server.db'}"
        self.timeout = timeout
        self.supervisor = Supervisor(root, quiet=True)

    def start(self) -> "MlflowServer":
        """Start the server and wait until it answers /health (``timeout`` s at most)."""
        self.supervisor.start([mlflow.server_spec(self.port, self.backend_uri, self.root / "server_artifacts",
                                                  name=self.NAME, timeout=self.timeout)])
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server's process group (SIGTERM, SIGKILL after 30 s); another ``sig`` (e.g. SIGKILL): at once."""
        if sig == signal.SIGTERM:
            self.supervisor.stop()
        else:
            self.supervisor.kill(self.NAME, sig)

    def __enter__(self) -> "MlflowServer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
