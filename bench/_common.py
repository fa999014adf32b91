"""Helpers shared by the benchmarks: server subprocesses, idle detection, stats, tables.

Both benchmarks compare wisp with a baseline, so both need the same few
things: start a server as a subprocess and learn its port from the line it
prints, wait until that process has finished its start-up work (imports,
model build, warm-up) so no background CPU skews the first samples, stop it
for sure (try/finally, SIGTERM then SIGKILL), summarise nanosecond samples,
and print a plain-text table.  Kept dependency-free (stdlib only) so importing
it costs nothing.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    """Progress goes to stderr so that ``--json`` output on stdout stays clean."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- server subprocesses ---------------------------------------------------


@dataclass
class ServerProcess:
    """A server started as a subprocess that announces ``... ws://HOST:PORT/...``.

    Its combined stdout/stderr is drained by a thread (so a chatty server can
    never block on a full pipe) and the last lines are kept for error reports.
    Use as a context manager: the process is always stopped on exit.
    """

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready_pattern: str = r"listening on ws://[^:/\s]+:(\d+)(/\S*)?"
    start_timeout_s: float = 120.0
    cpus: set[int] | None = None
    """Pin every thread of the server to these CPUs (None: let the OS schedule)."""
    proc: subprocess.Popen[str] | None = None
    port: int = 0
    url: str = ""
    _lines: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    _ready: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> "ServerProcess":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(
            self.argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        if self.cpus:
            pin_threads(self.proc.pid, self.cpus)
        threading.Thread(target=self._drain, name=f"{self.name}-output", daemon=True).start()
        try:
            if not self._ready.wait(self.start_timeout_s) or not self.port:
                raise RuntimeError(f"{self.name} did not start; last output:\n{self.output()}")
            if self.cpus:
                pin_threads(self.proc.pid, self.cpus)  # threads started before the first pin
        except BaseException:
            self.stop()
            raise

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        pattern = re.compile(self.ready_pattern)
        for line in self.proc.stdout:
            self._lines.append(line.rstrip("\n"))
            if not self._ready.is_set():
                match = pattern.search(line)
                if match:
                    self.port = int(match.group(1))
                    self.url = f"ws://127.0.0.1:{self.port}{match.group(2) or ''}"
                    self._ready.set()
        self._ready.set()  # process ended: unblock start() (port stays 0 if never announced)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.proc.pid

    def output(self) -> str:
        return "\n".join(self._lines)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM (wisp shuts down in order), then SIGKILL if it lingers."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            log(f"{self.name} ignored SIGTERM for {grace_s:.0f} s; killing it")
            proc.kill()
            proc.wait(5)

    def wait_idle(self, **kwargs: Any) -> float:
        return wait_for_idle(self.pid, **kwargs)


def pin_threads(pid: int, cpus: set[int]) -> None:
    """Set the CPU affinity of every current thread of ``pid`` (new threads inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except (ProcessLookupError, FileNotFoundError):
            pass


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` line of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``, …); 0 if absent."""
    prefix = field + ":"
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(prefix):
            return int(line.split()[1])
    return 0


def event_loop_runner() -> Any:
    """``uvloop.run`` when installed (wisp's own loop), else ``asyncio.run``."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        import asyncio

        return asyncio.run
    return uvloop.run


def _stat_fields(pid: int) -> list[bytes]:
    """``/proc/PID/stat`` after the command name (field 3 onwards: index 0 is the state), whatever the name holds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rindex(b")") + 2 :].split()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all threads), from ``/proc``."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)


def wait_for_idle(pid: int, *, max_cpu_fraction: float = 0.03, quiet_s: float = 1.0, timeout_s: float = 90.0) -> float:
    """Block until ``pid`` has used under ``max_cpu_fraction`` of a core for ``quiet_s``.

    wisp prints its ``listening`` line before the device worker has imported
    torch and before the built-in model is built and warmed; that work holds
    the GIL and a core for seconds.  Measuring during it would charge start-up
    to the request path, so every benchmark waits for quiet first.  Returns
    how long the wait took.
    """
    start = time.monotonic()
    step = 0.25
    quiet_since = time.monotonic()
    last = process_cpu_seconds(pid)
    while time.monotonic() - start < timeout_s:
        time.sleep(step)
        now = process_cpu_seconds(pid)
        if (now - last) / step > max_cpu_fraction:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return time.monotonic() - start
        last = now
    raise TimeoutError(f"process {pid} still busy after {timeout_s:.0f} s")


def minor_faults(pid: int) -> int:
    """Minor page faults of process ``pid`` so far (all its threads: ``minflt`` of /proc/PID/stat).

    A request whose freed buffers went back to the kernel touches them anew
    on the next: ~1,000 faults (~1 ms) per 64×64 request before wisp tuned
    malloc (engine.heap), and a plain script can have them too.
    """
    return int(_stat_fields(pid)[7])  # minflt (field 10)


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU time of each thread of ``pid``: thread id → seconds, at nanosecond resolution (schedstat).

    ``/proc/PID/stat`` counts in 10 ms ticks, too coarse for per-request or
    per-ping costs; the scheduler's own per-thread accounting is exact.
    """
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread ended while we looked
    return out


def thread_names(pid: int) -> dict[int, str]:
    """The name of each thread of ``pid`` (``/proc/PID/task/TID/comm``: what ``threading.Thread(name=…)`` set, cut to 15 bytes)."""
    out: dict[int, str] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = (task / "comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def threads_cpu_s(pid: int) -> float:
    """CPU time of every thread of ``pid`` in seconds, summed (:func:`thread_cpu_s`)."""
    return sum(thread_cpu_s(pid).values())


def cpu_by_thread(before: dict[int, float], after: dict[int, float]) -> dict[int, float]:
    """Thread id → CPU seconds spent between two :func:`thread_cpu_s` readings.

    A thread that started in between counts from zero; one that ended in between is not seen in ``after``.
    """
    return {tid: cpu - before.get(tid, 0.0) for tid, cpu in after.items()}


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> tuple[float, float]:
    """(all threads, the busiest thread): CPU seconds spent between two :func:`thread_cpu_s` readings."""
    spent = cpu_by_thread(before, after).values()
    return sum(spent), max(spent, default=0.0)


def _system_busy_s() -> float:
    """CPU seconds all processes have used since boot (``/proc/stat``, idle and iowait excluded)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


class ForeignLoad:
    """CPU that processes other than ours used during a window, in cores.

    The benchmarks share the machine with whatever else runs there; a test
    suite started by someone else in the middle of a run skews the numbers.
    This meter (whole-system busy time minus our own processes' CPU time)
    makes such interference visible in the report instead of silently
    inflating one side of a ratio.
    """

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self._t0 = self._busy0 = self._own0 = 0.0

    def _own_s(self) -> float:
        total = 0.0
        for pid in self.pids:
            try:
                total += process_cpu_seconds(pid)
            except (FileNotFoundError, ProcessLookupError):
                pass
        return total

    def start(self) -> "ForeignLoad":
        self._t0, self._busy0, self._own0 = time.monotonic(), _system_busy_s(), self._own_s()
        return self

    def cores(self) -> float:
        """Average number of cores used by others since :meth:`start` (≥ 0)."""
        wall = time.monotonic() - self._t0
        if wall <= 0:
            return 0.0
        foreign = (_system_busy_s() - self._busy0) - (self._own_s() - self._own0)
        return max(0.0, foreign / wall)


@dataclass
class QuietGate:
    """Wait, within a bounded budget, for other processes to leave the CPUs alone.

    Before each measurement round the benchmarks probe the foreign load for
    ``window_s``; while it is above ``max_cores`` they probe again, for at most
    ``per_wait_s`` per round and ``budget_s`` per run, so the whole benchmark
    stays bounded even on a machine that never quiets down.
    """

    own_pids: list[int]
    max_cores: float = 0.15
    window_s: float = 0.5
    per_wait_s: float = 10.0
    budget_s: float = 40.0
    waited_s: float = 0.0

    def _probes(self) -> int:
        left = min(self.per_wait_s, self.budget_s - self.waited_s)
        return max(0, int(left / self.window_s))

    def wait(self) -> float:
        """Blocking version; returns the foreign load of the last probe (cores)."""
        cores = math.nan
        for _ in range(self._probes()):
            meter = ForeignLoad(self.own_pids).start()
            time.sleep(self.window_s)
            self.waited_s += self.window_s
            cores = meter.cores()
            if cores <= self.max_cores:
                break
        return cores

    async def wait_async(self) -> float:
        """Same, without blocking the event loop (keepalive pings still get answered)."""
        import asyncio

        cores = math.nan
        for _ in range(self._probes()):
            meter = ForeignLoad(self.own_pids).start()
            await asyncio.sleep(self.window_s)
            self.waited_s += self.window_s
            cores = meter.cores()
            if cores <= self.max_cores:
                break
        return cores


def create_wisp_key(data_dir: Path) -> str:
    """``wisp keys create``; the key is the last line of stdout."""
    out = subprocess.run(
        [PYTHON, "-m", "server.cli", "keys", "create", "--data-dir", str(data_dir)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


def wisp_server(data_dir: Path, env: dict[str, str] | None = None) -> ServerProcess:
    """A ``wisp serve --port 0`` subprocess on loopback (not started yet)."""
    return ServerProcess(
        name="wisp",
        argv=[PYTHON, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir)],
        env={"WISP_LOG_LEVEL": "WARNING", **(env or {})},
        ready_pattern=r"wisp listening on ws://[^:/\s]+:(\d+)(/v1)",
    )


# ---- statistics --------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (p in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize_ns(samples_ns: Sequence[int], unit: float = 1e3) -> dict[str, float]:
    """n, mean, p50, p99, min, max of nanosecond samples, in ``unit`` ns (default µs)."""
    values = sorted(s / unit for s in samples_ns)
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "p50": statistics.median(values),
        "p99": percentile(values, 99),
        "min": values[0],
        "max": values[-1],
    }


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def fmt_ratio(value: float) -> str:
    """``1.234×``, or ``n/a`` when there was nothing to divide."""
    return "n/a" if math.isnan(value) else f"{value:.3f}×"


CONTENDED_CORES = 0.25
"""A round during which other processes used more than this many cores is "contended"."""


def quiet_ratio(a_rounds: Sequence[float], b_rounds: Sequence[float], loads: Sequence[float]) -> tuple[float, int]:
    """Ratio of the means of ``a`` and ``b`` over uncontended rounds only, and how many there were.

    Rounds hold equally many samples, so the mean of round means is the mean
    of their samples.  NaN when no round was quiet.
    """
    keep = [i for i, load in enumerate(loads) if load <= CONTENDED_CORES]
    if not keep:
        return math.nan, 0
    return ratio(statistics.fmean(a_rounds[i] for i in keep), statistics.fmean(b_rounds[i] for i in keep)), len(keep)


# ---- output --------------------------------------------------------------------


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (also readable as plain text)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"
    return str(value)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(extra_versions: dict[str, str] | None = None) -> dict[str, Any]:
    """Where and with what the numbers were taken (for the report and --json)."""
    import websockets

    versions = {"python": platform.python_version(), "websockets": websockets.__version__}
    try:
        import uvloop

        versions["uvloop"] = uvloop.__version__
    except ImportError:
        versions["uvloop"] = "not installed"
    versions.update(extra_versions or {})
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "versions": versions,
    }


def _json_safe(value: Any) -> Any:
    """NaN/inf (e.g. a ratio with no uncontended round) become null: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def dump_json(result: dict[str, Any]) -> None:
    json.dump(_json_safe(result), sys.stdout, indent=2, allow_nan=False, default=str)
    sys.stdout.write("\n")
