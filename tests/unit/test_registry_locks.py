"""registry.promotion_lock: one gate at a time per client, across processes (no MLflow needed)."""
import subprocess
import sys
import textwrap
import time
from contextlib import nullcontext

import pytest

from categories_classification import registry

_WAITER = textwrap.dedent("""\
    import sys
    from pathlib import Path
    from categories_classification import registry
    with registry.promotion_lock(sys.argv[1]):
        Path(sys.argv[2]).write_text("acquired")
""")


def _waiter(client_id, marker):
    return subprocess.Popen([sys.executable, "-c", _WAITER, client_id, str(marker)])  # pylint: disable=consider-using-with


@pytest.mark.slow  # two Python processes that import MLflow
def test_a_second_process_waits_for_the_same_clients_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    same, other = tmp_path / "same", tmp_path / "other"
    with registry.promotion_lock("client_0"):
        blocked, free = _waiter("client_0", same), _waiter("client_1", other)
        assert free.wait(timeout=60) == 0 and other.exists()  # another client's gate is not held up
        time.sleep(1.0)
        assert blocked.poll() is None and not same.exists()
    assert blocked.wait(timeout=60) == 0 and same.exists()
    # Every lock of the store sits in one hidden folder, none beside the store itself.
    assert (tmp_path / ".mlflow.db.locks" / "client_0_model.lock").exists()
    assert not list(tmp_path.glob("*.lock"))


def test_a_tracking_server_has_no_local_lock(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert isinstance(registry.promotion_lock("client_0"), nullcontext)
