"""A fleet that cannot be reached is said plainly at start-up, and wisp exits (no hang, no traceback)."""

from __future__ import annotations

import os
import subprocess

from tests.conftest import ROOT, WISP, free_port


def test_an_unreachable_cluster_ends_start_up_with_a_plain_error(tmp_path):
    port = free_port()  # nothing listens here
    env = {**os.environ, "HOME": str(tmp_path / "home"), "WISP_FLEET_CONNECT_TIMEOUT": "5", "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run(WISP + ["serve", "--port", "0", "--data-dir", str(tmp_path / "data"), "--engine", "ray",
                                  "--ray-address", f"127.0.0.1:{port}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert f"wisp: the Ray cluster at 127.0.0.1:{port} did not answer within 5 s" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


async def test_a_fleet_that_fails_to_start_is_said_with_its_cause_not_as_a_timeout():
    """The connect thread's exception reaches the loop (it was lost, and start-up waited out the whole timeout)."""
    from types import SimpleNamespace

    import pytest

    from engine.errors import FleetUnavailable
    from server.app import _bounded

    def connect(settings: object) -> None:
        raise RuntimeError("the local cluster's head node exited\nits log says more")

    with pytest.raises(FleetUnavailable) as raised:
        await _bounded(connect, SimpleNamespace(address=None, mode="ray-local"), 5)
    assert str(raised.value) == ("could not start the engine fleet on a local cluster: RuntimeError: "
                                 "the local cluster's head node exited")


def test_a_local_cluster_that_fails_to_start_is_tried_once_more_with_other_ports(monkeypatch, tmp_path):
    """Ports are picked free before Ray binds them (another process may take one meanwhile): a failed
    ``ray start`` is tried again; a second failure is the error.  (The real start is in tests/fleet/test_fleet.py.)"""
    import pytest

    from engine.fleet import cluster

    outcomes = [RuntimeError("ray start failed: port 41234 in use"), ("127.0.0.1:6379", tmp_path)]

    def start(cpus: int) -> tuple[str, object]:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(cluster, "_start_local_cluster", start)
    assert cluster.start_local_cluster(2) == ("127.0.0.1:6379", tmp_path) and not outcomes
    outcomes[:] = [RuntimeError("ray start failed: first"), RuntimeError("ray start failed: second")]
    with pytest.raises(RuntimeError, match="second"):
        cluster.start_local_cluster(2)
