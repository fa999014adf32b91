"""Server settings: CLI flags override ``WISP_*`` environment variables override defaults.

One tree: the engine's settings are :class:`engine.core.EngineConfig`'s fields, named alike here and
defaulting to its defaults (each default is stated once, there); :meth:`ServerConfig.engine_config`
hands them over by name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from engine.core import EngineConfig, default_torch_threads
from engine.net import NetPolicy
from engine.registry.writer import MAX_WRITE_INTERVAL_S, WRITE_INTERVAL_S

if TYPE_CHECKING:
    from engine.fleet.cluster import FleetSettings


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "wisp"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 7788
    data_dir: Path = field(default_factory=default_data_dir)
    public_url: str | None = None
    """Base URL put in ``imageURL``; by default taken from the request's Host header."""
    max_frame_bytes: int = 16 * 1024 * 1024
    """Frames above this get a ``frameTooLarge`` error for each of their tasks; the socket stays open."""
    hard_frame_bytes: int = 64 * 1024 * 1024
    """Frames above this close the socket (code 1009): wisp will not even read them."""
    max_tasks_per_frame: int = 64
    max_in_flight_per_session: int = 32
    max_queue: int = EngineConfig.max_queue
    idle_timeout_s: float = 120.0
    keepalive_interval_s: float = 20.0
    """WebSocket-level pings: a peer that answers none for ``keepalive_timeout_s`` is half-open and dropped."""
    keepalive_timeout_s: float = 20.0
    resume_ttl_s: float = 120.0
    task_retention_s: float = 3600.0
    max_http_body_bytes: int = 16 * 1024 * 1024
    max_http_response_bytes: int = 64 * 1024 * 1024
    head_timeout_s: float = 10.0
    """A request head (HTTP or WebSocket handshake) must arrive whole this long after it starts."""
    http_idle_timeout_s: float = 30.0
    """HTTP: silence allowed within a request body and between keep-alive requests."""
    auth_timeout_s: float = 30.0
    """A WebSocket must authenticate this long after it opens, or it is closed (1008)."""
    max_connections: int = 0
    """Connections held at once; 0: derived from the open-file limit (which start-up raises to its hard ceiling)."""
    max_unauthenticated_per_address: int = 64
    """Connections one address (IPv6: one /64) may hold without having authenticated (HTTP ones always count)."""
    max_work: float = EngineConfig.max_work
    """Per-request imageInference work limit in megapixel-steps; 0: 64 on CPU, 4096 on CUDA."""
    metrics_token: str | None = None
    """``GET /metrics`` from other than loopback needs ``Authorization: Bearer`` this token (unset: loopback only)."""
    revocation_check_s: float = 2.0
    """How often open sessions are checked against revoked keys (a revoked key's sockets close within this)."""
    download_threads: int = EngineConfig.download_threads
    """Model downloads run at once, on their own threads; more wait their turn."""
    download_timeout_s: float = EngineConfig.download_timeout_s
    """Total time one model download may take, retries included."""
    image_ttl_s: float = EngineConfig.image_ttl_s
    """Images (generated or uploaded) are kept this long unless their request's ``ttl`` says otherwise; 0: forever."""
    png_parameters: bool = True
    """PNGs carry their generation parameters (A1111 ``parameters`` chunk) unless a request opts out."""
    image_sweep_s: float = 60.0
    """How often expired images are looked for and deleted."""
    fetch_timeout_s: float = 60.0
    """Total time one image or dataset fetch (seedImage, maskImage, training inputs) may take."""
    """A ``POST /v1`` response body is built in memory: past this many bytes its results are left out (getResponse has them)."""
    max_model_bytes: int = EngineConfig.max_model_bytes
    """Largest model file a modelUpload may download (or PUT to /v1/files)."""
    allow_private_urls: bool = False
    torch_threads: int = field(default_factory=default_torch_threads)
    device: str = EngineConfig.device
    warm_builtin: bool = True
    gil_switch_interval_s: float = 0.0005
    journal_interval_s: float = WRITE_INTERVAL_S
    """How long the task journal's rows, image owners and task lines may wait to be written together: what a kill -9 may
    lose.  Longer spends less CPU per task on a lightly loaded server (one commit for several tasks; bench/RESULTS.md)."""
    shutdown_grace_s: float = 10.0
    """On SIGTERM/SIGINT, how long running tasks may finish before they are interrupted."""
    auth_max_failures: int = 20
    auth_window_s: float = 60.0
    webhook_timeout_s: float = 10.0
    webhook_retries: int = 3
    cache_device_bytes: int = EngineConfig.cache_device_bytes
    """Model-cache budget of the device tier (GPU memory, or RAM on CPU); 0: derived (70 % of the GPU, 35 % of RAM)."""
    cache_host_bytes: int = EngineConfig.cache_host_bytes
    """Model-cache budget of the host (RAM) tier; 0: derived (50 % of RAM; on CPU, 50 % minus the device tier)."""
    max_outgoing_bytes: int = 8 * 1024 * 1024
    """Per socket: replies waiting for a client that does not read; above it the socket is dropped (slow consumer)."""
    send_stall_s: float = 30.0
    """Per socket: a write that makes no progress this long drops the socket (slow consumer)."""
    lora_cache_bytes: int = EngineConfig.lora_cache_bytes
    """Budget of the host-RAM LoRA adapter cache; 0: derived (4 % of RAM, at least 64 MiB)."""
    training_slots: int = EngineConfig.training_slots
    """Training jobs run at once, each in its own process; more wait in line."""
    training_max_queued: int = EngineConfig.training_max_queued
    """Training jobs allowed to wait for a slot; more → queueFull."""
    dtype: str = EngineConfig.dtype
    """Inference weights' dtype: auto (float16 on CUDA, float32 on CPU), float32, float16, bfloat16."""
    max_batch: int = EngineConfig.max_batch
    """Dynamic batching: compatible one-image txt2img requests per device call (1 turns it off)."""
    batch_window_ms: float = EngineConfig.batch_window_ms
    """How long a request may wait for batch companions (0: only those already queued)."""

    engine: str = "embedded"
    """Where inference runs: ``embedded`` (this process), ``ray`` (a Ray Serve fleet on a running cluster) or
    ``ray-local`` (a throwaway one-box Ray cluster started by wisp)."""
    ray_address: str | None = None
    """The cluster ``--engine ray`` joins (``ray://…`` or ``host:port``); None: Ray's own ``RAY_ADDRESS``, else ``auto``."""
    replicas: int = 0
    """Engine replicas in the fleet; 0: one per GPU in the cluster, or 2 CPU replicas where it has none."""
    replica_threads: int = 1
    """Torch threads per CPU replica (a GPU replica uses its GPU)."""
    replica_cpus: float = 1.0
    """Ray CPUs each replica reserves."""
    fleet_origin: str | None = None
    """The base URL replicas fetch model files from (this server); None: ``http://<host>:<port>`` as bound."""
    fleet_cache_dir: str | None = None
    """Each replica node's directory for model files and scratch; None: ``<tmp>/wisp-fleet-<port>``."""
    fleet_disk_bytes: int = 64 * 1024**3
    """Byte budget of each node's model-file disk cache."""
    fleet_connect_timeout_s: float = 180.0
    """How long start-up waits for the Ray cluster and the engine application before it gives up, saying so."""

    def engine_config(self) -> EngineConfig:
        """The engine's settings: every field both configs name, and the outbound-URL policy."""
        shared = {f.name: getattr(self, f.name) for f in fields(EngineConfig) if f.name != "net" and hasattr(self, f.name)}
        return EngineConfig(**shared, net=NetPolicy(allow_private=self.allow_private_urls, fetch_total_s=self.fetch_timeout_s))

    @classmethod
    def from_env(cls) -> "ServerConfig":
        c = cls()
        c.host = os.environ.get("WISP_HOST", c.host)
        c.port = _env_int("WISP_PORT", c.port)
        if os.environ.get("WISP_DATA_DIR"):
            c.data_dir = Path(os.environ["WISP_DATA_DIR"])
        c.public_url = os.environ.get("WISP_PUBLIC_URL") or None
        c.max_frame_bytes = _env_int("WISP_MAX_FRAME_BYTES", c.max_frame_bytes)
        c.max_tasks_per_frame = _env_int("WISP_MAX_TASKS_PER_FRAME", c.max_tasks_per_frame)
        c.max_in_flight_per_session = _env_int("WISP_MAX_IN_FLIGHT", c.max_in_flight_per_session)
        c.max_queue = _env_int("WISP_MAX_QUEUE", c.max_queue)
        c.idle_timeout_s = _env_float("WISP_IDLE_TIMEOUT", c.idle_timeout_s)
        c.keepalive_interval_s = _env_float("WISP_KEEPALIVE_INTERVAL", c.keepalive_interval_s)
        c.keepalive_timeout_s = _env_float("WISP_KEEPALIVE_TIMEOUT", c.keepalive_timeout_s)
        c.resume_ttl_s = _env_float("WISP_RESUME_TTL", c.resume_ttl_s)
        c.task_retention_s = _env_float("WISP_TASK_RETENTION", c.task_retention_s)
        c.max_model_bytes = _env_int("WISP_MAX_MODEL_BYTES", c.max_model_bytes)
        c.allow_private_urls = _env_bool("WISP_ALLOW_PRIVATE_URLS", c.allow_private_urls)
        c.torch_threads = _env_int("WISP_TORCH_THREADS", c.torch_threads)
        c.device = os.environ.get("WISP_DEVICE", c.device)
        c.warm_builtin = _env_bool("WISP_WARM_BUILTIN", c.warm_builtin)
        c.auth_max_failures = _env_int("WISP_AUTH_MAX_FAILURES", c.auth_max_failures)
        c.auth_window_s = _env_float("WISP_AUTH_WINDOW", c.auth_window_s)
        c.shutdown_grace_s = _env_float("WISP_SHUTDOWN_GRACE", c.shutdown_grace_s)
        c.gil_switch_interval_s = _env_float("WISP_GIL_SWITCH_INTERVAL", c.gil_switch_interval_s)
        c.journal_interval_s = min(MAX_WRITE_INTERVAL_S, max(0.0, _env_float("WISP_JOURNAL_INTERVAL", c.journal_interval_s)))
        c.cache_device_bytes = _env_int("WISP_CACHE_DEVICE_BYTES", c.cache_device_bytes)
        c.cache_host_bytes = _env_int("WISP_CACHE_HOST_BYTES", c.cache_host_bytes)
        c.lora_cache_bytes = _env_int("WISP_LORA_CACHE_BYTES", c.lora_cache_bytes)
        c.training_slots = max(1, _env_int("WISP_TRAINING_SLOTS", c.training_slots))
        c.training_max_queued = max(0, _env_int("WISP_TRAINING_MAX_QUEUED", c.training_max_queued))
        c.max_batch = max(1, _env_int("WISP_MAX_BATCH", c.max_batch))
        c.dtype = os.environ.get("WISP_DTYPE", c.dtype)
        c.batch_window_ms = max(0.0, _env_float("WISP_BATCH_WINDOW_MS", c.batch_window_ms))
        c.max_outgoing_bytes = _env_int("WISP_MAX_OUTGOING_BYTES", c.max_outgoing_bytes)
        c.max_http_response_bytes = _env_int("WISP_MAX_HTTP_RESPONSE_BYTES", c.max_http_response_bytes)
        c.head_timeout_s = _env_float("WISP_HEAD_TIMEOUT", c.head_timeout_s)
        c.http_idle_timeout_s = _env_float("WISP_HTTP_IDLE_TIMEOUT", c.http_idle_timeout_s)
        c.auth_timeout_s = _env_float("WISP_AUTH_TIMEOUT", c.auth_timeout_s)
        c.max_connections = _env_int("WISP_MAX_CONNECTIONS", c.max_connections)
        c.max_unauthenticated_per_address = _env_int("WISP_MAX_UNAUTHENTICATED_PER_ADDRESS", c.max_unauthenticated_per_address)
        c.max_work = max(0.0, _env_float("WISP_MAX_WORK", c.max_work))
        c.metrics_token = os.environ.get("WISP_METRICS_TOKEN") or None
        c.revocation_check_s = max(0.1, _env_float("WISP_REVOCATION_CHECK", c.revocation_check_s))
        c.download_threads = max(1, _env_int("WISP_DOWNLOAD_THREADS", c.download_threads))
        c.download_timeout_s = _env_float("WISP_DOWNLOAD_TIMEOUT", c.download_timeout_s)
        c.fetch_timeout_s = _env_float("WISP_FETCH_TIMEOUT", c.fetch_timeout_s)
        c.send_stall_s = _env_float("WISP_SEND_STALL", c.send_stall_s)
        c.image_ttl_s = max(0.0, _env_float("WISP_IMAGE_TTL", c.image_ttl_s))
        c.image_sweep_s = max(0.1, _env_float("WISP_IMAGE_SWEEP_INTERVAL", c.image_sweep_s))
        c.png_parameters = _env_bool("WISP_PNG_PARAMETERS", c.png_parameters)
        c.engine = os.environ.get("WISP_ENGINE", c.engine)
        c.ray_address = os.environ.get("WISP_RAY_ADDRESS") or None
        c.replicas = max(0, _env_int("WISP_REPLICAS", c.replicas))
        c.replica_threads = max(1, _env_int("WISP_REPLICA_THREADS", c.replica_threads))
        c.replica_cpus = max(0.0, _env_float("WISP_REPLICA_CPUS", c.replica_cpus))
        c.fleet_origin = os.environ.get("WISP_FLEET_ORIGIN") or None
        c.fleet_cache_dir = os.environ.get("WISP_FLEET_CACHE_DIR") or None
        c.fleet_disk_bytes = _env_int("WISP_FLEET_DISK_BYTES", c.fleet_disk_bytes)
        c.fleet_connect_timeout_s = _env_float("WISP_FLEET_CONNECT_TIMEOUT", c.fleet_connect_timeout_s)
        return c

    def fleet_settings(self) -> "FleetSettings":
        """The fleet's settings (``--engine ray`` / ``ray-local``): replicas run this server's engine settings (cache
        budgets, batching, dtype, limits) with ``replica_threads`` torch threads."""
        import tempfile

        from engine.fleet.cluster import FleetSettings
        from engine.fleet.replica import ReplicaSettings

        cache_dir = self.fleet_cache_dir or os.path.join(tempfile.gettempdir(), f"wisp-fleet-{self.port}")
        replica = ReplicaSettings(cache_dir=cache_dir, engine=replace(self.engine_config(), torch_threads=self.replica_threads),
                                  disk_bytes=self.fleet_disk_bytes, gil_switch_interval_s=self.gil_switch_interval_s)
        return FleetSettings(mode=self.engine, address=self.ray_address, replicas=self.replicas, replica_cpus=self.replica_cpus,
                             replica=replica)
