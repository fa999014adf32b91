"""``wisp models list|delete``: a team's models on a running server, through the same socket as any client.

``delete`` sends the ``modelDelete`` task (a wisp extension): only the team
that uploaded a model may delete it; the AIR stops resolving at once, tasks
already running with it finish, and the file goes when nothing refers to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from typing import Any


async def run_task(ws_url: str, api_key: str, task: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """Authenticate, send one task, and return its data items and errors (the first reply that names it)."""
    from websockets.asyncio.client import connect

    async with connect(ws_url, max_size=None) as ws:
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": api_key}]))
        reply = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
        if "errors" in reply:
            return [], reply["errors"]
        await ws.send(json.dumps([task]))
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=120))
            data = [i for i in frame.get("data", []) if i.get("taskUUID") == task["taskUUID"]]
            errors = [e for e in frame.get("errors", []) if e.get("taskUUID") == task["taskUUID"]]
            if data or errors:
                return data, errors


def _key(args: argparse.Namespace) -> str | None:
    key = args.api_key or os.environ.get("WISP_API_KEY")
    if not key:
        print("give --api-key or set WISP_API_KEY", file=sys.stderr)
    return key


def _failed(errors: list[dict]) -> int:
    error = errors[0]
    where = f" ({error['parameter']})" if error.get("parameter") else ""
    print(f"wisp: {error.get('code')}{where}: {error.get('message')}", file=sys.stderr)
    return 1


def cmd_models_delete(args: argparse.Namespace) -> int:
    key = _key(args)
    if not key:
        return 2
    data, errors = asyncio.run(run_task(args.server, key, {"taskType": "modelDelete", "taskUUID": str(uuid.uuid4()), "air": args.air}))
    if errors:
        return _failed(errors)
    print(f"deleted {data[0]['air']}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    key = _key(args)
    if not key:
        return 2
    task: dict[str, Any] = {"taskType": "modelSearch", "taskUUID": str(uuid.uuid4()), "visibility": args.visibility, "limit": 100}
    if args.search:
        task["search"] = args.search
    offset, total = 0, None
    while total is None or offset < total:
        data, errors = asyncio.run(run_task(args.server, key, {**task, "taskUUID": str(uuid.uuid4()), "offset": offset}))
        if errors:
            return _failed(errors)
        total = int(data[0]["totalResults"])
        for model in data[0]["results"]:
            print(f"{model['air']}\t{model['category']}\t{model['architecture']}\t{'private' if model['private'] else 'public'}\t{model['name']}")
        if not data[0]["results"]:
            break
        offset += len(data[0]["results"])
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="list or delete models on a running server").add_subparsers(
        dest="models_command", required=True
    )
    server = os.environ.get("WISP_URL", "ws://127.0.0.1:7788/v1")
    delete = models.add_parser("delete", help="delete one of your team's models (running tasks finish first)")
    delete.add_argument("air")
    delete.add_argument("--server", default=server)
    delete.add_argument("--api-key", default=None, help="default: $WISP_API_KEY")
    delete.set_defaults(func=cmd_models_delete)
    listing = models.add_parser("list", help="the models your team can use (AIR, category, architecture, visibility, name)")
    listing.add_argument("--search", default=None)
    listing.add_argument("--visibility", default="all", choices=["all", "private", "public"])
    listing.add_argument("--server", default=server)
    listing.add_argument("--api-key", default=None, help="default: $WISP_API_KEY")
    listing.set_defaults(func=cmd_models_list)
