"""Throwaway PostgreSQL and Redis servers on loopback, from Debian's packages (no Docker).

A server's data stays in its ``run_dir`` between starts (a second start reuses it). Passwords are
generated on first start and kept in files only their owner reads; they are never on a command
line and never printed (:func:`mask`). :func:`existing_postgres` / :func:`existing_redis` check
servers given by URL (``CATEGORIES_POSTGRES_URL``, ``CATEGORIES_REDIS_URL``), which nobody stops.

From Python (tests, the Celery profile: ``scripts/profiles/celery.py``), a server as a context
manager that stops it on exit::

    with start_postgres(run_dir=tmp, port=supervisor.free_port()) as postgres:
        url = postgres.create_database("mlflow")
"""
import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, TypeVar
from urllib.parse import urlparse

from scripts.supervisor import ProcessSpec, Running, StartError, Supervisor, answers

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run" / "services"
HOST = "127.0.0.1"
POSTGRES_PORT = int(os.environ.get("CATEGORIES_POSTGRES_PORT", "5433"))
REDIS_PORT = int(os.environ.get("CATEGORIES_REDIS_PORT", "6380"))
POSTGRES_BIN = Path(os.environ.get("CATEGORIES_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "categories"
# The PostgreSQL server refuses to run as root: its files and process belong to this user then.
SERVICE_USER = "postgres"


class ServiceError(RuntimeError):
    """A server did not start, or does not answer (the message names it, credentials masked)."""


def mask(url: str) -> str:
    """``url`` with its user and password replaced by ``***`` (for every message and log line)."""
    parsed = urlparse(url)
    if not (parsed.username or parsed.password):
        return url
    host = f"{parsed.hostname}:{parsed.port}" if parsed.port else str(parsed.hostname)
    return parsed._replace(netloc=f"***@{host}").geturl()


def sqlalchemy_url(url: str) -> str:
    """A ``postgresql://`` URL for SQLAlchemy (Airflow, MLflow): with the installed driver, psycopg2, named.

    SQLAlchemy 2.1 picks psycopg (3) for a bare ``postgresql://``, which this environment does not have.
    """
    parsed = urlparse(url)
    return parsed._replace(scheme="postgresql+psycopg2").geturl() if parsed.scheme == "postgresql" else url


def postgres_available() -> bool:
    """True if the PostgreSQL server binaries are installed (``initdb``, ``postgres``)."""
    return (POSTGRES_BIN / "initdb").is_file() and (POSTGRES_BIN / "postgres").is_file()


def redis_available() -> bool:
    """True if ``redis-server`` is on PATH."""
    return shutil.which("redis-server") is not None


@dataclass
class Server(Running):
    """A running server: its URL (with credentials: never print it, print :attr:`display`), its log (its
    supervisor's process is named after it: ``postgres``, ``redis``)."""

    name: str
    url: str
    log: Path
    supervisor: Optional[Supervisor] = None  # None: an existing server we did not start
    on_stop: list[Callable[[], None]] = field(default_factory=list)

    @property
    def display(self) -> str:
        """The URL with credentials masked."""
        return mask(self.url)

    def __post_init__(self) -> None:
        self.names = (self.log.stem,)

    def stop(self) -> None:
        """Stop the server's process group if we started it (SIGTERM, SIGKILL after 20 s)."""
        super().stop()
        for callback in self.on_stop:
            callback()


@dataclass
class Postgres(Server):
    """A PostgreSQL server; :meth:`create_database` gives the URL of one of its databases."""

    def database_url(self, database: str) -> str:
        """The URL of ``database`` on this server (same credentials)."""
        return urlparse(self.url)._replace(path=f"/{database}").geturl()

    def create_database(self, database: str) -> str:
        """Create ``database`` unless it exists (idempotent); return its URL."""
        import psycopg2  # pylint: disable=import-outside-toplevel  # heavy, and only the stack needs it

        try:
            connection = psycopg2.connect(self.database_url("postgres"), connect_timeout=10)
        except psycopg2.Error as exc:
            raise ServiceError(f"PostgreSQL at {self.display} refused a connection: {_one_line(exc)}") from None
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{database}"')
        finally:
            connection.close()
        return self.database_url(database)


def start_postgres(*, run_dir: Path = RUN_DIR / "postgres", port: int = POSTGRES_PORT, timeout: float = 60.0,
                   supervisor: Optional[Supervisor] = None) -> Postgres:
    """Start PostgreSQL on 127.0.0.1:``port`` with its data in ``run_dir`` (created by initdb on first use).

    ``supervisor``: the one that records it as ``postgres`` (a stack's; default: one over ``run_dir``).
    """
    if not postgres_available():
        raise ServiceError(f"PostgreSQL server binaries not found in {POSTGRES_BIN}: install the Debian package "
                           "postgresql-15 (or postgresql), or set CATEGORIES_POSTGRES_URL to an existing server")
    if answers(port, HOST, 1.0):
        raise ServiceError(f"port {port} on {HOST} is in use (a server already running?)")
    owner = _service_owner()
    data, password_file = run_dir / "data", run_dir / "password"
    run_dir.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        _check_reachable(run_dir.resolve(), owner)
    if not (data / "PG_VERSION").exists():
        _initdb(run_dir, data, password_file, owner)
    # Only loopback TCP and a socket in run_dir (never /var/run/postgresql, which may not exist).
    command = [str(POSTGRES_BIN / "postgres"), "-D", str(data), "-p", str(port), "-c", f"listen_addresses={HOST}",
               "-c", f"unix_socket_directories={run_dir}", "-c", "max_connections=300"]
    password = password_file.read_text(encoding="utf-8").strip()
    supervisor = supervisor or Supervisor(run_dir, quiet=True)
    server = Postgres("PostgreSQL", f"postgresql://{SUPERUSER}:{password}@{HOST}:{port}/postgres",
                      supervisor.log("postgres"), supervisor)
    return _started(server, command, port, timeout, _postgres_ready, owner)


def start_redis(*, run_dir: Path = RUN_DIR / "redis", port: int = REDIS_PORT, timeout: float = 30.0,
                supervisor: Optional[Supervisor] = None) -> Server:
    """Start Redis on 127.0.0.1:``port`` (password required, append-only file in ``run_dir``), recorded as ``redis`` by
    ``supervisor`` (default: one over ``run_dir``)."""
    if not redis_available():
        raise ServiceError("redis-server not found: install the Debian package redis-server "
                           "(apt-get install -y redis-server), or set CATEGORIES_REDIS_URL to an existing server")
    if answers(port, HOST, 1.0):
        raise ServiceError(f"port {port} on {HOST} is in use (a server already running?)")
    run_dir.mkdir(parents=True, exist_ok=True)
    password, config = _secret(run_dir / "password"), run_dir / "redis.conf"
    # The password goes in a file of its own, not on the command line (visible to `ps`).
    _write_private(config, redis_config(run_dir, port, password))
    supervisor = supervisor or Supervisor(run_dir, quiet=True)
    server = Server("Redis", f"redis://:{password}@{HOST}:{port}/0", supervisor.log("redis"), supervisor)
    return _started(server, ["redis-server", str(config)], port, timeout, _redis_ready, None)


def redis_config(run_dir: Path, port: int, password: str) -> str:
    """The throwaway Redis's ``redis.conf``: loopback, a password, and persistence a Celery broker needs.

    A queued Celery message lives only in Redis: snapshots alone (``save 60 1``) lost the messages
    written since the last one when Redis was killed, and their tasks waited for the scheduler's
    ``task_queued_timeout`` (issue #25, case 6). The append-only file, written and fsynced before
    each write is acknowledged (``appendfsync always``; the broker writes a few keys per task),
    brings back every queued and unacknowledged message on restart.
    """
    return "\n".join([f"bind {HOST}", f"port {port}", f"dir {run_dir}", "protected-mode yes",
                      f"requirepass {password}", "appendonly yes", "appendfsync always", "save 60 1",
                      "daemonize no", ""])


def existing_postgres(url: str) -> Postgres:
    """An existing PostgreSQL server (``CATEGORIES_POSTGRES_URL``): checked, never started or stopped."""
    server = Postgres("PostgreSQL", url, Path(os.devnull))
    if not _postgres_ready(server):
        raise ServiceError(f"PostgreSQL at {server.display} does not answer: start it, or fix CATEGORIES_POSTGRES_URL")
    return server


def existing_redis(url: str) -> Server:
    """An existing Redis server (``CATEGORIES_REDIS_URL``): checked, never started or stopped."""
    server = Server("Redis", url, Path(os.devnull))
    if not _redis_ready(server):
        raise ServiceError(f"Redis at {server.display} does not answer: start it, or fix CATEGORIES_REDIS_URL")
    return server


def _service_owner() -> Optional[pwd.struct_passwd]:
    """The unprivileged user PostgreSQL runs as when we are root (initdb refuses root), else None."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
                       check=True, capture_output=True, timeout=30)
        return pwd.getpwnam(SERVICE_USER)


def _check_reachable(run_dir: Path, owner: pwd.struct_passwd) -> None:
    """The service user must be able to reach ``run_dir``: every folder above it searchable by others."""
    for folder in run_dir.parents:
        if not os.stat(folder).st_mode & 0o001:
            raise ServiceError(f"PostgreSQL runs as {owner.pw_name!r} and cannot reach {run_dir}: {folder} is "
                               "not searchable by other users (chmod o+x, or choose another folder)")


def _initdb(run_dir: Path, data: Path, password_file: Path, owner: Optional[pwd.struct_passwd]) -> None:
    password = _secret(password_file)
    pwfile = run_dir / ".initdb-password"
    _write_private(pwfile, password + "\n")
    if owner is not None:
        for path in (run_dir, password_file, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    try:
        subprocess.run([str(POSTGRES_BIN / "initdb"), "-D", str(data), "-U", SUPERUSER, "--pwfile", str(pwfile),
                        "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "--encoding=UTF8",
                        "--no-sync"], check=True, capture_output=True, text=True, timeout=120,
                       user=owner.pw_uid if owner else None, group=owner.pw_gid if owner else None, cwd=run_dir)
    except subprocess.CalledProcessError as exc:
        raise ServiceError(f"initdb failed in {data}: {exc.stderr.strip()[-1000:]}") from None
    finally:
        pwfile.unlink(missing_ok=True)


ServerT = TypeVar("ServerT", bound=Server)


def _started(server: ServerT, command: list[str], port: int, timeout: float, ready: Callable[[Server], bool],
             owner: Optional[pwd.struct_passwd]) -> ServerT:
    """``server`` started (as ``owner`` if given) once it answers on ``port`` and ``ready`` says so; stopped, and
    :class:`ServiceError` raised, if it does not."""
    assert server.supervisor is not None
    as_owner = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []} if owner else {}
    spec = ProcessSpec(server.log.stem, command, dict(os.environ),
                       health=lambda: answers(port, HOST, 1.0) and ready(server), timeout=timeout, grace=20.0,
                       cwd=server.log.parent, popen=as_owner)  # PostgreSQL's own user can enter it
    try:
        server.supervisor.start([spec])
    except StartError as exc:
        raise ServiceError(f"{server.name} at {server.display}: {exc}") from None
    return server


def _postgres_ready(server: Server) -> bool:
    import psycopg2  # pylint: disable=import-outside-toplevel

    try:
        psycopg2.connect(urlparse(server.url)._replace(path="/postgres").geturl(), connect_timeout=3).close()
    except psycopg2.OperationalError:
        return False
    return True


def _redis_ready(server: Server) -> bool:
    import redis  # pylint: disable=import-outside-toplevel

    try:
        return bool(redis.Redis.from_url(server.url, socket_timeout=3).ping())
    except redis.RedisError:
        return False


def _secret(path: Path) -> str:
    """The password kept in ``path``, generated (URL-safe) on first use."""
    if not path.exists():
        _write_private(path, secrets.token_urlsafe(24) + "\n")
    return path.read_text(encoding="utf-8").strip()


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
