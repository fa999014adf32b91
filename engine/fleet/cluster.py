"""Connecting the front end to a Ray cluster and its Serve application of engine replicas.

``--engine ray`` joins a running cluster (``--ray-address``, else Ray's own
``RAY_ADDRESS`` / ``auto``); ``--engine ray-local`` starts a throwaway
one-box cluster first (loopback only, its own temp dir, usage stats and token
auth off, no dashboard) and stops it when wisp stops.  Either way the front end
then deploys the application — or, when one of that name is already running
(a front end that restarted), reuses it as it is, caches and all.

The application has two deployments: ``EngineReplica`` (inference; one GPU
each where the cluster has GPUs, else ``replicas`` CPU replicas) routed by
:class:`engine.fleet.router.WispRouter`, and a ``FleetState`` actor the
replicas publish their state to.  Nothing here runs on the event loop: the
server calls :func:`connect` once at start-up, before it serves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.fleet.replica import NAMESPACE, STATE_ACTOR, EngineReplica, FleetState, ReplicaSettings

log = logging.getLogger("wisp.fleet")

APP_NAME = "wisp"
ROUTING_STATS_PERIOD_S = 0.25


@dataclass(frozen=True)
class FleetSettings:
    mode: str
    """``ray`` (join a cluster) or ``ray-local`` (start a one-box cluster)."""
    address: str | None = None
    replicas: int = 0
    """Engine replicas; 0: one per GPU in the cluster, or 2 CPU replicas where it has none."""
    replica_cpus: float = 1.0
    app_name: str = APP_NAME
    max_ongoing: int = 64
    """Requests one replica holds at once (queued in its engine); past it the router tries the next rank."""
    training_replicas: int = 1
    """Replicas of the training deployment (each runs trainings one at a time, in its own process, like the embedded engine)."""
    training_max_ongoing: int = 16
    replica: ReplicaSettings = ReplicaSettings(cache_dir=os.path.join(tempfile.gettempdir(), "wisp-fleet"))


@dataclass
class Fleet:
    """A connected fleet: the engine deployment's handle, the state actor, and what to stop at the end."""

    handle: Any
    state: Any
    training: Any
    settings: FleetSettings
    gpus: int
    local_cluster: Path | None = None

    def close(self) -> None:
        """Disconnect; a ``ray-local`` cluster is stopped (its replicas with it)."""
        import ray

        if self.local_cluster is not None:
            with contextlib.suppress(Exception):
                from ray import serve

                serve.shutdown()
        with contextlib.suppress(Exception):
            ray.shutdown()
        if self.local_cluster is not None:
            stop_local_cluster(self.local_cluster)


RAY_DEFAULTS = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_DEDUP_LOGS": "0"}
"""Set for Ray processes wisp starts and for its own driver, unless the environment says otherwise."""


def ray_env(temp_dir: Path) -> dict[str, str]:
    """The environment Ray processes wisp starts get: no usage stats, no token file in anyone's home."""
    env = {**RAY_DEFAULTS, **os.environ}
    env["HOME"] = str(temp_dir / "home")  # Ray writes ~/.ray: never the user's
    (temp_dir / "home").mkdir(parents=True, exist_ok=True)
    return env


def start_local_cluster(cpus: int, attempts: int = 2) -> tuple[str, Path]:
    """``ray start --head`` on loopback in a short temp dir (socket paths are length-limited); (address, dir).

    The ports are picked free just before Ray binds them, so another process may take one in between (parallel
    test workers starting clusters at once): a failed start is tried again with fresh ports, ``attempts`` in all.
    """
    for _ in range(attempts - 1):
        try:
            return _start_local_cluster(cpus)
        except RuntimeError as exc:
            log.warning("a local Ray cluster did not start (%s); trying again with other ports", str(exc)[-200:])
    return _start_local_cluster(cpus)


def _start_local_cluster(cpus: int) -> tuple[str, Path]:
    temp_dir = Path(tempfile.mkdtemp(prefix="wisp-ray-", dir="/tmp" if os.path.isdir("/tmp") else None))
    # Every port picked free (Ray's defaults are fixed numbers: two clusters on one machine — parallel test
    # workers, two wisps — would collide on them).
    ports = {name: _free_port() for name in ("ray-client-server-port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                             "runtime-env-agent-port", "metrics-export-port", "node-manager-port",
                                             "object-manager-port")}
    command = [_ray_command(), "start", "--head", "--port=0", "--node-ip-address=127.0.0.1",
               f"--temp-dir={temp_dir / 't'}", "--include-dashboard=false", f"--num-cpus={cpus}",
               f"--num-gpus={_cuda_count()}", "--disable-usage-stats", *(f"--{name}={port}" for name, port in ports.items())]
    done = subprocess.run(command, env=ray_env(temp_dir), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise RuntimeError(f"ray start failed: {done.stderr.strip()[-400:]}")
    address = (temp_dir / "t" / "ray_current_cluster").read_text().strip()
    log.info("started a local Ray cluster at %s (%d CPUs)", address, cpus)
    return address, temp_dir


def _ray_command() -> str:
    """The ``ray`` CLI beside this Python (the venv's), else the one on PATH."""
    ray_bin = Path(sys.executable).with_name("ray")
    return str(ray_bin) if ray_bin.exists() else "ray"


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop_local_cluster(temp_dir: Path) -> None:
    """Stop the cluster :func:`start_local_cluster` started — only its processes (``ray stop`` would stop every Ray
    cluster on the machine): those naming its temp dir or its GCS address, and all their descendants."""
    import signal

    address = ""
    with contextlib.suppress(OSError):
        address = (temp_dir / "t" / "ray_current_cluster").read_text().strip()
    pids = _processes_of(str(temp_dir), address)
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.1)
        pids = [pid for pid in pids if _alive(pid)]
        if not pids:
            break
    shutil.rmtree(temp_dir, ignore_errors=True)


def _processes_of(temp_dir: str, address: str) -> list[int]:
    """PIDs whose command line names ``temp_dir`` or ``address``, with every descendant (Linux ``/proc``)."""
    parents: dict[int, int] = {}
    roots: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
        if pid != os.getpid() and (temp_dir in args or (address and f"--address={address}" in args)
                                   or (address and f"--gcs-address={address}" in args)):
            roots.add(pid)
    found = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in found and pid not in found:
                found.add(pid)
                grew = True
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def connect(settings: FleetSettings) -> Fleet:
    """Join (or start) the cluster, deploy or reuse the application; returns the connected :class:`Fleet`."""
    import ray
    from ray import serve

    local: Path | None = None
    address = settings.address
    if settings.mode == "ray-local":
        replicas = settings.replicas or 2
        address, local = start_local_cluster(max(2, int(replicas * settings.replica_cpus) + 1))
    for name, value in RAY_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        ray.init(address=address or "auto", namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING,
                 configure_logging=False)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        state = ray.remote(FleetState).options(name=STATE_ACTOR, namespace=NAMESPACE, lifetime="detached",
                                               get_if_exists=True, num_cpus=0).remote()
        serve.start(proxy_location="Disabled")
        if _running(settings.app_name) and _running(training_app(settings)):
            log.info("reusing the running Serve application %r", settings.app_name)
        else:
            serve.run(build_app(settings, gpus), name=settings.app_name, route_prefix=None, blocking=False)
            serve.run(build_training_app(settings, gpus), name=training_app(settings), route_prefix=None, blocking=False)
        handle = serve.get_app_handle(settings.app_name)
        training = serve.get_app_handle(training_app(settings))
    except BaseException:
        with contextlib.suppress(Exception):
            ray.shutdown()
        if local is not None:
            stop_local_cluster(local)
        raise
    return Fleet(handle=handle, state=state, training=training, settings=settings, gpus=gpus, local_cluster=local)


def training_app(settings: FleetSettings) -> str:
    return f"{settings.app_name}-training"


def build_training_app(settings: FleetSettings, gpus: int) -> Any:
    """The training deployment: ``EngineReplica`` × ``training_replicas`` (a GPU each where there are GPUs), default routing."""
    from ray import serve

    replica, resources = _placed(settings, gpus)
    deployment = serve.deployment(
        EngineReplica, name="TrainingReplica", num_replicas=settings.training_replicas, ray_actor_options=resources,
        max_ongoing_requests=settings.training_max_ongoing, max_queued_requests=-1, health_check_period_s=5.0,
        health_check_timeout_s=60.0, graceful_shutdown_timeout_s=5.0,
    )
    return deployment.bind(replace(replica, publish=False))


def build_app(settings: FleetSettings, gpus: int) -> Any:
    """The Serve application: ``EngineReplica`` × N (one per GPU, else 2) behind :class:`~engine.fleet.router.WispRouter`."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from engine.fleet.router import WispRouter

    replica, resources = _placed(settings, gpus)
    deployment = serve.deployment(
        EngineReplica, name="EngineReplica", num_replicas=settings.replicas or gpus or 2, ray_actor_options=resources,
        max_ongoing_requests=settings.max_ongoing, max_queued_requests=-1,
        health_check_period_s=2.0, health_check_timeout_s=30.0, graceful_shutdown_timeout_s=5.0,
        request_router_config=RequestRouterConfig(request_router_class=WispRouter,
                                                  request_routing_stats_period_s=ROUTING_STATS_PERIOD_S,
                                                  request_routing_stats_timeout_s=5.0),
    )
    return deployment.bind(replica)


def _placed(settings: FleetSettings, gpus: int) -> tuple[ReplicaSettings, dict[str, Any]]:
    """A replica's settings and Ray resources: a GPU each (device ``cuda``) where the cluster has GPUs, else CPUs only."""
    if gpus > 0:
        return (replace(settings.replica, engine=replace(settings.replica.engine, device="cuda")),
                {"num_gpus": 1, "num_cpus": settings.replica_cpus})
    return settings.replica, {"num_cpus": settings.replica_cpus}


def _running(app_name: str) -> bool:
    from ray import serve

    try:
        status = serve.status().applications.get(app_name)
    except Exception:
        return False
    return status is not None and str(getattr(status.status, "value", status.status)) == "RUNNING"


def _cuda_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:
        return 0
