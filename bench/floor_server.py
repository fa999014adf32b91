"""The least a WebSocket server can do to serve bench/inference.py's imageInference: the floor under wisp's figure.

Run by ``bench/floor.py`` as a subprocess, exactly as wisp is.  It uses what
wisp uses where a server cannot do without it: ``websockets`` on uvloop (the
settings of ``bench/echo_server.py``), one device thread that runs the very
call, PNG encode and file write of ``bench/inference.py``'s direct worker
(``Direct.generate``), the same torch thread count, malloc thresholds and GIL
switch interval as ``wisp serve``, and a hand-off to the loop with
``call_soon_threadsafe``.  With ``--journal`` it also keeps wisp's durable
records: the task journal's claim and outcome (``server.journal.TaskJournal``)
and the image's owner row, through wisp's write-behind thread
(``engine.registry.writer``).  What it leaves out is everything else wisp does:
validation, keys and teams, model resolution, the fair queue, leases, step
reports, the result's bookkeeping and the task log.

Protocol: ``[{"taskType":"authentication",…}]`` is answered with a data item;
``[{"taskType":"imageInference", "taskUUID", "seed", "steps", "CFGScale", …}]``
with ``{"data":[{"taskType":"imageInference","taskUUID",…,"imageURL",…,"seed"}]}``.

Usage: ``python bench/floor_server.py FOLDER OUT_DIR TMP_DIR [--journal DB] [--threads 1]``; prints
``floor listening on ws://127.0.0.1:PORT/v1`` once the pipeline is loaded and warm.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/protocol.py would shadow wisp's protocol package

for _name, _value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error")):
    os.environ.setdefault(_name, _value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("out_dir")
    parser.add_argument("tmp_dir")
    parser.add_argument("--journal", metavar="DB", help="keep wisp's journal and image-owner rows in this SQLite file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--load-on-device", action="store_true",
                        help="load the pipeline on the device thread (as wisp's engine does) instead of the main thread")
    parser.add_argument("--wisp-model", action="store_true",
                        help="call the pipeline as wisp's engine loads it (engine.pipelines: load_folder) instead of from_pretrained")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    from bench.inference import Case, Direct
    from engine.heap import keep_freed_memory
    from engine.threads import name_os_thread

    sys.setswitchinterval(0.0005)  # wisp's WISP_GIL_SWITCH_INTERVAL default
    keep_freed_memory()

    def load() -> Direct:
        pipe = None
        if args.wisp_model:
            from engine.pipelines.stable_diffusion.loading import load_folder

            pipe = load_folder(Path(args.folder)).base
        loaded = Direct(Path(args.folder), Path(args.out_dir), Path(args.tmp_dir), args.threads, pipe=pipe)
        for seed in range(3):
            loaded.generate(seed, Case(4, 7.0))  # warm, as wisp warms its built-in model
        return loaded

    journal = writer = None
    owner_sql = ""
    if args.journal:
        from engine.images.store import OWNER_SQL
        from engine.registry.db import Database
        from server.journal import TaskJournal

        db = Database(Path(args.journal))
        journal, writer, owner_sql = TaskJournal(db), db.writer, OWNER_SQL

    jobs: queue.SimpleQueue[tuple[int, Case, asyncio.AbstractEventLoop, asyncio.Future[str]]] = queue.SimpleQueue()

    loaded: list[Direct] = []
    ready = threading.Event()

    def device() -> None:
        name_os_thread("floor-device")
        if args.load_on_device:
            loaded.append(load())
        ready.set()
        direct = loaded[0]
        while True:
            seed, case, loop, future = jobs.get()
            try:
                name = direct.generate(seed, case)
                if writer is not None:
                    writer.put(owner_sql, (name.removesuffix(".png"), "bench", time.time(), None))
                loop.call_soon_threadsafe(future.set_result, name)
            except BaseException as exc:  # answered, never kills the thread
                loop.call_soon_threadsafe(future.set_exception, exc)

    if not args.load_on_device:
        loaded.append(load())
    threading.Thread(target=device, name="floor-device", daemon=True).start()
    ready.wait()

    async def handler(ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        loop = asyncio.get_running_loop()
        try:
            while True:
                tasks = json.loads(await ws.recv(decode=False))
                task = tasks[0]
                if task.get("taskType") != "imageInference":
                    await ws.send(json.dumps({"data": [{"taskType": task.get("taskType")}]}))
                    continue
                uuid, seed = task["taskUUID"], int(task["seed"])
                if journal is not None:
                    journal.claimed("bench", uuid, "imageInference", task)
                future: asyncio.Future[str] = loop.create_future()
                jobs.put((seed, Case(int(task["steps"]), float(task["CFGScale"])), loop, future))
                name = await future
                item = {"taskType": "imageInference", "taskUUID": uuid, "imageUUID": name.removesuffix(".png"),
                        "imageURL": f"http://{args.host}/image/{name}", "seed": seed}
                if journal is not None:
                    journal.finished("bench", uuid, "success", [item], [])
                await ws.send(json.dumps({"data": [item]}))
        except ConnectionClosed:
            pass

    async def serve_forever() -> None:
        from websockets.asyncio.server import serve

        async with serve(handler, args.host, args.port, compression=None, max_size=64 * 1024 * 1024,
                         ping_interval=20, ping_timeout=20) as server:
            print(f"floor listening on ws://{args.host}:{server.sockets[0].getsockname()[1]}/v1", flush=True)
            stop = asyncio.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
            await stop.wait()
        if writer is not None:
            writer.close()

    import uvloop

    uvloop.run(serve_forever())
    return 0


if __name__ == "__main__":
    sys.exit(main())
