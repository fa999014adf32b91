"""``wisp upload PATH|URL``: put a model into a running wisp, with progress.

Before a byte of the file moves, ``GET /v1/account`` checks the server, the
key, the AIR (its form, and that its source is the team's) and the file's
size against the server's limit: a refusal costs a round trip, not a
multi-GB transfer.  Without ``--air`` the model goes under the team's default
source, named after the file (``<source>:<file stem>@<version>``).

A local file is then streamed to ``PUT /v1/files`` (a bytes progress bar;
its SHA-256 is computed on the way and becomes the default
``uniqueIdentifier``), then a ``modelUpload`` task is sent over the socket
and each of the five phases is shown as it arrives.  Exit status 0 only once
``ready`` was reported.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

PHASES = ("validated", "downloaded", "optimized", "stored", "ready")


def _bar(done: int, total: int | None, width: int = 30) -> str:
    if not total:
        return f"{done / 1e6:8.1f} MB"
    filled = int(width * done / total)
    return f"[{'#' * filled}{'.' * (width - filled)}] {100 * done / total:5.1f}% {done / 1e6:8.1f}/{total / 1e6:.1f} MB"


def _http_base(ws_url: str) -> str:
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def put_file(path: Path, ws_url: str, api_key: str, quiet: bool = False) -> tuple[str, str]:
    """Stream ``path`` to the server's file endpoint; returns (url, sha256)."""
    import httpx

    total = path.stat().st_size
    digest = hashlib.sha256()
    sent = 0
    started = time.monotonic()

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        with open(path, "rb") as f:
            while chunk := f.read(1024 * 1024):
                digest.update(chunk)
                sent += len(chunk)
                if not quiet:
                    rate = sent / max(time.monotonic() - started, 1e-6) / 1e6
                    print(f"\rupload   {_bar(sent, total)} {rate:6.1f} MB/s", end="", file=sys.stderr, flush=True)
                yield chunk

    response = httpx.put(
        f"{_http_base(ws_url)}/v1/files",
        content=chunks(),
        headers={"Authorization": f"Bearer {api_key}", "content-length": str(total)},
        timeout=httpx.Timeout(60.0, read=None),
    )
    if not quiet:
        print(file=sys.stderr)
    if response.status_code != 201:
        raise SystemExit(f"file upload refused: HTTP {response.status_code} {response.text[:300]}")
    return response.json()["url"], digest.hexdigest()


async def run_model_upload(ws_url: str, api_key: str, task: dict, quiet: bool = False) -> int:
    from websockets.asyncio.client import connect

    async with connect(ws_url, max_size=None) as ws:
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": api_key}]))
        reply = json.loads(await ws.recv())
        if "errors" in reply:
            print(f"authentication failed: {reply['errors'][0].get('message')}", file=sys.stderr)
            return 1
        await ws.send(json.dumps([task]))
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=3600))
            for error in frame.get("errors", []):
                if error.get("taskUUID") == task["taskUUID"]:
                    where = f" ({error['parameter']})" if error.get("parameter") else ""
                    print(f"\nfailed: {error.get('code')}{where}: {error.get('message')}", file=sys.stderr)
                    return 1
            for item in frame.get("data", []):
                if item.get("taskUUID") != task["taskUUID"]:
                    continue
                status = item.get("status")
                step = PHASES.index(status) + 1 if status in PHASES else 0
                if not quiet:
                    print(f"phase    [{'#' * step}{'.' * (5 - step)}] {status:<10} {item.get('message', '')}", file=sys.stderr)
                if status == "ready":
                    print(item.get("air"))
                    return 0


class Refused(Exception):
    """What the preflight found wrong, in one line for the user."""


def preflight(ws_url: str, api_key: str) -> dict:
    """The key's account (``GET /v1/account``): proves the server answers and takes the key, before any upload."""
    import httpx

    response = httpx.get(f"{_http_base(ws_url)}/v1/account", headers={"Authorization": f"Bearer {api_key}"}, timeout=30.0)
    if response.status_code == 200:
        return dict(response.json())
    try:
        error = response.json()["errors"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        error = {"code": f"HTTP {response.status_code}", "message": response.text[:200]}
    if response.status_code in (401, 429):
        raise Refused(f"the server refused the API key ({error.get('code')}): {error.get('message')}")
    raise Refused(f"the server's account check failed ({error.get('code')}): {error.get('message')}")


def model_id(stem: str) -> str:
    """A file name as the ``id`` of an AIR (letters, digits, ``-``, ``_``; at most 64)."""
    text = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-_")[:64].strip("-_")
    return text or "model"


def choose_air(given: str | None, account: dict, stem: str, version: str) -> str:
    """The AIR to upload as: ``given`` once checked, else one under the team's default source."""
    from protocol.models import AIR_PATTERN

    air = given or f"{account['defaultSource']}:{model_id(stem)}@{version}"
    if not re.fullmatch(AIR_PATTERN, air):
        raise Refused(f"--air {air!r} is not an AIR: give source:id@version, such as {account['defaultSource']}:my-model@1")
    source = air.split(":", 1)[0]
    if source not in account.get("sources", []):
        yours = ", ".join(account.get("sources", [])) or "none"
        raise Refused(f"the source {source!r} is not your team's (team {account['team']!r} has: {yours}); "
                      f"use one of those, or leave out --air to upload as {account['defaultSource']}:{model_id(stem)}@{version}")
    return air


def cmd_upload(args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get("WISP_API_KEY")
    if not api_key:
        print("give --api-key or set WISP_API_KEY", file=sys.stderr)
        return 2
    source = args.source
    remote = source.startswith(("http://", "https://"))
    path = Path(source)
    if not remote and not path.is_file():
        print(f"wisp: no such file: {path}", file=sys.stderr)
        return 2
    stem = (Path(urlsplit(source).path).stem or "model") if remote else path.stem
    try:
        account = preflight(args.server, api_key)
        air = choose_air(args.air, account, stem, args.version)
        limit = account.get("maxModelBytes")
        if not remote and limit and path.stat().st_size > limit:
            raise Refused(f"{path} is {path.stat().st_size} bytes; this server takes model files up to {limit} bytes "
                          "(WISP_MAX_MODEL_BYTES)")
    except Refused as exc:
        print(f"wisp: {exc}", file=sys.stderr)
        return 1
    if remote:
        url, unique = source, args.unique_identifier or hashlib.sha256(source.encode()).hexdigest()
    else:
        url, sha = put_file(path, args.server, api_key, args.quiet)
        unique = args.unique_identifier or sha
    default_name = stem
    task: dict = {
        "taskType": "modelUpload",
        "taskUUID": str(uuid.uuid4()),
        "air": air,
        "category": args.category,
        "architecture": args.architecture or ("upscaler" if args.category == "upscaler" else "sd1x"),
        "format": "safetensors",
        "downloadURL": url,
        "uniqueIdentifier": unique,
        "name": args.name or default_name,
        "version": args.version,
        "private": not args.public,
    }
    if args.category in ("checkpoint", "embeddings"):
        task["type"] = args.type or ("base" if args.category == "checkpoint" else "positive")
    if args.tags:
        task["tags"] = [t.strip() for t in args.tags.split(",") if t.strip()]
    if args.default_weight is not None:
        task["defaultWeight"] = args.default_weight
    if args.trigger_words:
        task["positiveTriggerWords"] = args.trigger_words
    return asyncio.run(run_model_upload(args.server, api_key, task, args.quiet))


def add_parser(sub: argparse._SubParsersAction) -> None:
    upload = sub.add_parser("upload", help="upload a model file (path or URL) to a running server, with progress")
    upload.add_argument("source", help="a local .safetensors file, or an http(s) URL the server can fetch")
    upload.add_argument("--air", default=None,
                        help="source:id@version under one of your team's sources (default: your team's default source, "
                             "the file's name, --version)")
    upload.add_argument("--category", required=True,
                        choices=["checkpoint", "lora", "lycoris", "controlnet", "vae", "embeddings", "upscaler"])
    upload.add_argument("--architecture", default=None, help="default: sd1x; for --category upscaler: upscaler (its only one)")
    upload.add_argument("--type", default=None, help="checkpoint: base|inpainting|refiner; embeddings: positive|negative")
    upload.add_argument("--name", default=None)
    upload.add_argument("--version", default="1")
    upload.add_argument("--unique-identifier", default=None, help="default: the file's SHA-256 (or the URL's)")
    upload.add_argument("--public", action="store_true", help="visible to every team (default: private)")
    upload.add_argument("--tags", default=None, help="comma-separated")
    upload.add_argument("--default-weight", type=float, default=None)
    upload.add_argument("--trigger-words", default=None)
    upload.add_argument("--server", default=os.environ.get("WISP_URL", "ws://127.0.0.1:7788/v1"))
    upload.add_argument("--api-key", default=None, help="default: $WISP_API_KEY")
    upload.add_argument("--quiet", action="store_true")
    upload.set_defaults(func=cmd_upload)
