"""Prometheus metrics (``GET /metrics``), with prometheus-client.

Two kinds.  Event counts and latencies are recorded where a task finishes
(:func:`server.tasklog.task_finished` calls :func:`task_done`): tasks by type
and outcome, and histograms of the time queued, running and end to end.
Everything that is a state (queue depth, sessions, sockets, in-flight tasks,
the model cache's bytes and counters per tier, the LoRA cache, batch sizes,
training jobs, webhook failures) is read from the live objects when scraped
(:class:`StateCollector`), so the hot paths pay nothing for it.

No label identifies a team or a key: the series count stays bounded and a
scrape shows no customer.  Who may scrape is decided in ``server.routes``:
loopback peers, or anyone sending ``Authorization: Bearer $WISP_METRICS_TOKEN``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REGISTRY = CollectorRegistry(auto_describe=True)
"""wisp's own registry: the process's default one is not exported (no global state from other libraries)."""

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
TASKS = Counter("wisp_tasks", "Tasks finished, by taskType and outcome (success or the error code).",
                ["task_type", "outcome"], registry=REGISTRY)
QUEUED = Histogram("wisp_task_queued_seconds", "Time a task waited before its work started.", ["task_type"],
                   buckets=_BUCKETS, registry=REGISTRY)
RUNNING = Histogram("wisp_task_running_seconds", "Time a task's work ran.", ["task_type"], buckets=_BUCKETS, registry=REGISTRY)
TOTAL = Histogram("wisp_task_seconds", "Time from a task's arrival to its end.", ["task_type"], buckets=_BUCKETS, registry=REGISTRY)
SENT = Counter("wisp_result_bytes", "Bytes of results sent to clients, by taskType.", ["task_type"], registry=REGISTRY)
IMAGES = Counter("wisp_images", "Images generated or stored, by taskType.", ["task_type"], registry=REGISTRY)
MODELS_STORED = Counter("wisp_models_stored", "Models registered by modelUpload.", registry=REGISTRY)
MODEL_BYTES = Counter("wisp_model_bytes", "Bytes of model files registered by modelUpload (after conversion).", registry=REGISTRY)
FILE_BYTES = Counter("wisp_file_upload_bytes", "Bytes received by PUT /v1/files (model files sent for a later modelUpload).",
                     registry=REGISTRY)


def model_stored(size_bytes: int) -> None:
    MODELS_STORED.inc()
    MODEL_BYTES.inc(size_bytes)


def file_received(size_bytes: int) -> None:
    FILE_BYTES.inc(size_bytes)


_children: dict[tuple[str, str], Any] = {}
"""(taskType, outcome) → its metrics' labelled children: ``labels()`` validates and locks on every call, and a task
line is on the event loop's budget (≤ 0.1 ms with its log line; bench/observability.py)."""


def _for(task_type: str, outcome: str) -> Any:
    found = _children.get((task_type, outcome))
    if found is None:
        found = _children[(task_type, outcome)] = (
            TASKS.labels(task_type, outcome), QUEUED.labels(task_type), RUNNING.labels(task_type), TOTAL.labels(task_type),
            SENT.labels(task_type), IMAGES.labels(task_type),
        )
    return found


def tasks_counted(task_type: str, outcome: str, count: int) -> None:
    """Count ``count`` finished tasks that have no times to observe (queries answered from memory)."""
    _for(task_type, outcome)[0].inc(count)


def task_done(task_type: str, outcome: str, queued_s: float, running_s: float, images: int, sent_bytes: int, ran: bool = True) -> None:
    """Count a finished task; its times only if it ran (a task refused before its ack has none)."""
    tasks, queued, running, total, sent, made = _for(task_type, outcome)
    tasks.inc()
    if not ran:
        return
    queued.observe(queued_s)
    running.observe(running_s)
    total.observe(queued_s + running_s)
    if sent_bytes:
        sent.inc(sent_bytes)
    if images:
        made.inc(images)


class StateCollector(Collector):
    """The server's live state as gauges and counters, read at scrape time from ``state()``."""

    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        self.state = state

    def collect(self) -> Iterator[Any]:
        s = self.state()
        yield _gauge("wisp_queue_depth", "Jobs waiting for the device.", s["queue"])
        yield _gauge("wisp_sessions", "Sessions held (attached or kept for resume).", s["sessions"])
        yield _gauge("wisp_tasks_in_flight", "Tasks running or queued, all sessions.", s["in_flight"])
        connections = s["connections"]
        yield _gauge("wisp_connections", "Connections held.", connections["open"])
        yield _gauge("wisp_connections_unauthenticated", "Connections that have not authenticated.", connections["unauthenticated"])
        yield _counter("wisp_connections_refused", "Connections refused by the connection limits.", connections["refused"])
        cache = s["model_cache"]
        bytes_ = GaugeMetricFamily("wisp_model_cache_bytes", "Bytes of loaded models, by tier.", labels=["tier"])
        budget = GaugeMetricFamily("wisp_model_cache_budget_bytes", "The model cache's budget, by tier.", labels=["tier"])
        for tier in ("device", "host"):
            bytes_.add_metric([tier], cache[f"{tier}_bytes"])
            budget.add_metric([tier], cache[f"{tier}_budget"])
        yield bytes_
        yield budget
        yield _counter("wisp_model_cache_hits", "Requests served by a loaded model.", cache["hits"])
        yield _counter("wisp_model_cache_host_hits", "Requests served from the host tier (moved back to the device).", cache["host_hits"])
        yield _counter("wisp_model_cache_misses", "Model loads started.", cache["misses"])
        yield _counter("wisp_model_cache_evictions_to_host", "Models moved from the device to the host tier.", cache["evictions_to_host"])
        yield _counter("wisp_model_cache_evictions_dropped", "Models dropped to respect a budget.", cache["evictions_dropped"])
        lora = cache["loraCache"]
        yield _gauge("wisp_lora_cache_bytes", "Bytes of parsed LoRA files held in RAM.", lora["bytes"])
        yield _counter("wisp_lora_cache_hits", "LoRA reads served from RAM.", lora["hits"])
        yield _counter("wisp_lora_cache_misses", "LoRA files read from disk.", lora["misses"])
        batches = CounterMetricFamily("wisp_batches", "Device calls, by how many requests they ran together.", labels=["size"])
        for size, count in sorted(s["batches"].items()):
            batches.add_metric([str(size)], count)
        yield batches
        yield _gauge("wisp_training_jobs", "Training jobs running or waiting.", s["training_jobs"])
        yield _counter("wisp_webhook_failures", "Webhook deliveries given up after their retries.", s["webhook_failures"])


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


_watched: list[StateCollector] = []


def watch(state: Callable[[], dict[str, Any]]) -> None:
    """Export ``state()``'s gauges from now on (a later server in the same process replaces an earlier one)."""
    for old in _watched:
        REGISTRY.unregister(old)
    _watched[:] = [StateCollector(state)]
    REGISTRY.register(_watched[0])


def exposition() -> bytes:
    return generate_latest(REGISTRY)
