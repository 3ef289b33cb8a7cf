"""``$AIRFLOW_HOME/airflow.cfg`` as a stack runs Airflow, so that a plain ``airflow ...`` agrees with the stack.

The stacks give their settings to Airflow's processes as ``AIRFLOW__*`` variables, but Airflow
writes an ``airflow.cfg`` of its defaults on first use (``dags_folder = $AIRFLOW_HOME/dags``,
``load_examples = True``): a command run by hand with only ``AIRFLOW_HOME`` set read that file,
and ``airflow dags reserialize`` loaded Airflow's example DAGs into the stack's database.
:func:`write` rewrites the file with Airflow's own writer under the stack's environment: every
option the environment sets gets its value there, every other line stays as it was (the fernet
key and JWT secret that Airflow generated on first use included).

    python -m scripts.airflow_cfg    # what write() runs, in the stack's environment
"""
import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping

ROOT = Path(__file__).resolve().parent.parent


class ConfigWriteError(RuntimeError):
    """Airflow's writer failed (one line: the file and Airflow's last words)."""


def write(env: Mapping[str, str], timeout: float = 120.0) -> Path:
    """Rewrite ``$AIRFLOW_HOME/airflow.cfg`` from ``env`` (an Airflow process's environment); its path.

    In a process of its own: Airflow reads its configuration once, when it is imported.
    """
    target = Path(env["AIRFLOW_HOME"]) / "airflow.cfg"
    result = subprocess.run([sys.executable, "-m", "scripts.airflow_cfg"], env=dict(env), cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ConfigWriteError(f"{target}: Airflow could not write it (exit {result.returncode}): {last}")
    return target


def main() -> int:
    """Write this process's Airflow configuration (its environment over the file's) into the file."""
    # pylint: disable=import-outside-toplevel  # Airflow reads the environment when imported: only here
    from airflow.configuration import AIRFLOW_CONFIG, write_default_airflow_configuration_if_needed

    # As every `airflow` command does first: a missing file is created, with its generated secrets.
    conf = write_default_airflow_configuration_if_needed()
    target = Path(AIRFLOW_CONFIG)
    staged = target.with_name(f".{target.name}.tmp")
    # Only its owner reads it, as Airflow's own (it holds secrets, and the Celery profile's database URLs).
    descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        conf.write(handle, include_sources=False, include_env_vars=True, include_providers=True, extra_spacing=True,
                   only_defaults=False, show_values=True)
    os.replace(staged, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
