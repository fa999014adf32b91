"""``wisp train DATASET…``: submit a training job to a running wisp and follow it with a progress bar.

Local files (images or a zip of images) are sent inline as data URIs; URLs
and imageUUIDs are passed through.  Statuses are printed as they are pushed;
the exit status is 0 once ``model_ready`` arrives (the new LoRA's AIR is
printed on stdout).  Ctrl-C cancels the job (``taskCancel``) before exiting;
``wisp train --cancel TASKUUID`` cancels a job started elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import mimetypes
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from protocol.common import UUID_PATTERN
from server.upload_cli import _bar


_UUID = re.compile(UUID_PATTERN)
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]{256,}")
"""A long argument of base64 characters only (no dot) is raw base64 image data, not a file name."""


class NoSuchFile(Exception):
    """A dataset argument that reads as a file name, but no such file exists."""


def dataset_entry(entry: str) -> str:
    """A dataset argument as the task carries it: a local file is sent inline, the rest as given.

    A URL, a data URI, an imageUUID or a long base64 string goes as it is;
    anything else is a file name, and one that does not exist is refused here
    (:class:`NoSuchFile`) rather than sent for the server to misread.
    """
    path = Path(entry)
    if entry.startswith(("http://", "https://", "data:")) or _UUID.fullmatch(entry):
        return entry
    if not path.is_file():
        if _BASE64.fullmatch(entry):
            return entry
        raise NoSuchFile(entry)
    mime = "application/zip" if path.suffix.lower() == ".zip" else (mimetypes.guess_type(path.name)[0] or "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def build_task(args: argparse.Namespace) -> dict[str, Any]:
    task: dict[str, Any] = {
        "taskType": "training",
        "taskUUID": str(uuid.uuid4()),
        "model": args.recipe,
        "deliveryMethod": "async",
        "inputs": {"dataset": [dataset_entry(d) for d in args.dataset]},
        "lora_type": args.lora_type,
        "seed": args.seed,
    }
    optional = {
        "trainingSteps": args.steps, "learningRate": args.learning_rate, "triggerWord": args.trigger_word,
        "baseModel": args.base_model, "rank": args.rank, "resolution": args.resolution,
        "instance_prompt": args.instance_prompt, "class_prompt": args.class_prompt,
    }
    task.update({k: v for k, v in optional.items() if v is not None})
    if args.air:
        task["importModel"] = {
            "air": args.air, "name": args.name or args.air, "uniqueIdentifier": args.unique_identifier or task["taskUUID"],
            "version": args.air.rsplit("@", 1)[-1], "private": not args.public,
        }
    return task


async def _session(server: str, api_key: str) -> Any:
    from websockets.asyncio.client import connect

    ws = await connect(server, max_size=None)
    await ws.send(json.dumps([{"taskType": "authentication", "apiKey": api_key}]))
    reply = json.loads(await ws.recv())
    if "errors" in reply:
        await ws.close()
        raise SystemExit(f"authentication failed: {reply['errors'][0].get('message')}")
    return ws


async def follow(server: str, api_key: str, task: dict[str, Any], quiet: bool = False) -> int:
    ws = await _session(server, api_key)
    task_uuid = task["taskUUID"]
    try:
        await ws.send(json.dumps([task]))
        if not quiet:
            print(f"task     {task_uuid}", file=sys.stderr)
        while True:
            frame = json.loads(await ws.recv())
            for error in frame.get("errors", []):
                if error.get("taskUUID") == task_uuid:
                    where = f" ({error['parameter']})" if error.get("parameter") else ""
                    print(f"\nfailed: {error.get('code')}{where}: {error.get('message')}", file=sys.stderr)
                    return 1
            for item in frame.get("data", []):
                if item.get("taskUUID") != task_uuid or "trainingStatus" not in item:
                    continue
                if not quiet:
                    status, step, steps = item["trainingStatus"], item.get("step"), item.get("steps")
                    if status == "training_started" and steps:
                        loss = f" loss {item['loss']:.4f}" if item.get("loss") is not None else ""
                        print(f"\rtraining {_bar(step or 0, steps).split(']')[0]}] {step}/{steps}{loss}   ", end="", file=sys.stderr, flush=True)
                    else:
                        print(f"\n{status:<26} {item.get('message', '')}", end="", file=sys.stderr, flush=True)
                if item.get("status") == "success":
                    if not quiet:
                        print(file=sys.stderr)
                    print(item["air"])
                    return 0
    except (KeyboardInterrupt, asyncio.CancelledError):
        await ws.send(json.dumps([{"taskType": "taskCancel", "taskUUID": task_uuid}]))
        print("\ncancelled", file=sys.stderr)
        return 130
    finally:
        await ws.close()


async def cancel(server: str, api_key: str, task_uuid: str) -> int:
    ws = await _session(server, api_key)
    try:
        await ws.send(json.dumps([{"taskType": "taskCancel", "taskUUID": task_uuid}]))
        while True:
            frame = json.loads(await ws.recv())
            for item in frame.get("data", []) + frame.get("errors", []):
                if item.get("taskType") == "taskCancel" and item.get("taskUUID") == task_uuid:
                    if "code" in item:
                        print(f"{item['code']}: {item.get('message')}", file=sys.stderr)
                        return 1
                    print("cancelled" if item.get("cancelled") else "not running (already finished)")
                    return 0 if item.get("cancelled") else 1
    finally:
        await ws.close()


def cmd_train(args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get("WISP_API_KEY")
    if not api_key:
        print("give --api-key or set WISP_API_KEY", file=sys.stderr)
        return 2
    if args.cancel:
        return asyncio.run(cancel(args.server, api_key, args.cancel))
    if not args.dataset:
        print("give at least one dataset entry (image files, a zip, URLs or imageUUIDs)", file=sys.stderr)
        return 2
    try:
        task = build_task(args)
    except NoSuchFile as exc:
        print(f"wisp: no such file: {exc} (a dataset entry is an image file, a .zip, a URL or an imageUUID)", file=sys.stderr)
        return 2
    try:
        return asyncio.run(follow(args.server, api_key, task, args.quiet))
    except KeyboardInterrupt:
        return 130


def add_parser(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train a LoRA on a running server and follow it with a progress bar")
    train.add_argument("dataset", nargs="*", help="image files, a .zip of images, image URLs or imageUUIDs")
    train.add_argument("--recipe", default="wisp:sd1x@lora-training", help="wisp:sd1x@lora-training or wisp:sdxl@lora-training")
    train.add_argument("--base-model", default=None, help="checkpoint AIR to train on (default: the recipe's built-in model)")
    train.add_argument("--air", default=None, help="register the LoRA as source:id@version (default: your team's source, generated id)")
    train.add_argument("--name", default=None)
    train.add_argument("--unique-identifier", default=None)
    train.add_argument("--public", action="store_true", help="visible to every team (default: private)")
    train.add_argument("--steps", type=int, default=None, help="default: 2 × the number of images, between 10 and 50")
    train.add_argument("--learning-rate", type=float, default=None, help="default 1e-4")
    train.add_argument("--rank", type=int, default=None, help="default 4")
    train.add_argument("--resolution", type=int, default=None)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--trigger-word", default=None)
    train.add_argument("--instance-prompt", default=None)
    train.add_argument("--class-prompt", default=None, help="enables prior preservation with images drawn by the base model")
    train.add_argument("--lora-type", choices=["lora", "lycoris"], default="lora")
    train.add_argument("--cancel", metavar="TASKUUID", default=None, help="cancel a queued or running job instead")
    train.add_argument("--server", default=os.environ.get("WISP_URL", "ws://127.0.0.1:7788/v1"))
    train.add_argument("--api-key", default=None, help="default: $WISP_API_KEY")
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(func=cmd_train)
