"""The ``wisp`` command: ``serve`` and ``keys create|list|revoke``."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import sys
from pathlib import Path

from server.config import ServerConfig


def _data_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    return ServerConfig.from_env().data_dir


def serve_config(args: argparse.Namespace) -> ServerConfig:
    """The server's settings: ``WISP_*`` variables, then the flags over them."""
    config = ServerConfig.from_env()
    if args.host:
        config.host = args.host
    if args.port is not None:
        config.port = args.port
    if args.data_dir:
        config.data_dir = Path(args.data_dir)
    if args.public_url:
        config.public_url = args.public_url
    if args.allow_private_urls:
        config.allow_private_urls = True
    if args.no_png_parameters:
        config.png_parameters = False
    if args.engine:
        config.engine = args.engine
    if args.ray_address:
        config.ray_address = args.ray_address
    if args.replicas is not None:
        config.replicas = args.replicas
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    config = serve_config(args)
    from server.tasklog import configure

    configure()
    from engine.errors import FleetUnavailable
    from server.app import DataDirInUse, run_forever

    try:
        import uvloop
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(run_forever(config))
    except DataDirInUse as exc:
        print(f"wisp: {exc}", file=sys.stderr)
        return 1
    except FleetUnavailable as exc:
        print(f"wisp: {exc.message}", file=sys.stderr, flush=True)
        os._exit(1)  # Ray's threads may still be retrying the cluster: leave without waiting for them
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            print(f"wisp: cannot listen on {config.host}:{config.port}: {exc.strerror} "
                  "(pick another --port, or stop what holds it)", file=sys.stderr)
            return 1
        raise
    return 0


def _keys(args: argparse.Namespace, create: bool = False):
    from engine.registry.keys import KeyStore
    from server.datadir import admin_database

    return KeyStore(admin_database(args.data_dir, create=create))


def cmd_keys_create(args: argparse.Namespace) -> int:
    key = _keys(args, create=True).create(args.team)
    print(f"created API key for team {args.team!r}:", file=sys.stderr)
    print(key)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    for info in _keys(args).list():
        state = "revoked" if info.revoked_at else "live"
        print(f"{info.id}\t{info.team}\t{info.prefix}…\t{state}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    count = _keys(args).revoke(args.key)
    if not count:
        print("no live key matches", file=sys.stderr)
        return 1
    print(f"revoked {count} key(s)")
    return 0


def _registry(args: argparse.Namespace, create: bool = False):
    from engine.registry.models import ModelRegistry
    from server.datadir import admin_database

    return ModelRegistry(admin_database(args.data_dir, create=create))


def cmd_sources_create(args: argparse.Namespace) -> int:
    import re
    import sqlite3

    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", args.name):
        print("a source name is lowercase letters, digits, '-' and '_' (at most 64)", file=sys.stderr)
        return 2
    from engine.registry.models import ReservedSource

    try:
        _registry(args, create=True).create_source(args.name, args.team)
    except sqlite3.IntegrityError:
        print(f"source {args.name!r} already exists", file=sys.stderr)
        return 1
    except ReservedSource as exc:
        print(exc.message, file=sys.stderr)
        return 1
    print(f"source {args.name!r} belongs to team {args.team!r}")
    return 0


def cmd_sources_list(args: argparse.Namespace) -> int:
    for name, team in _registry(args).list_sources():
        print(f"{name}\t{team}")
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    lines = _registry(args).usage()
    print(f"{'team':<20} {'stored bytes':>14} {'GB (rounded up)':>16} {'$/day':>8} {'GB-days':>8} {'$ to date':>10}")
    for line in lines:
        print(f"{line.team:<20} {line.bytes_now:>14} {line.gb_now:>16} {line.daily_cost_usd:>8.4f} {line.gb_days:>8} {line.cost_to_date_usd:>10.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wisp", description="Runware-compatible diffusion task server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", default=None, help="address to bind (WISP_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (WISP_PORT, default 7788; 0 picks a free one)")
    serve.add_argument("--data-dir", default=None, help="data directory (WISP_DATA_DIR)")
    serve.add_argument("--public-url", default=None, help="base URL for imageURL (WISP_PUBLIC_URL)")
    serve.add_argument("--allow-private-urls", action="store_true", help="let downloads and webhooks reach private/loopback hosts")
    serve.add_argument("--engine", choices=("embedded", "ray", "ray-local"), default=None,
                       help="where inference runs: embedded (default), ray (a Ray Serve fleet on a running cluster), "
                            "ray-local (a one-box Ray cluster wisp starts) (WISP_ENGINE)")
    serve.add_argument("--ray-address", default=None, help="the Ray cluster --engine ray joins (WISP_RAY_ADDRESS)")
    serve.add_argument("--replicas", type=int, default=None,
                       help="engine replicas in the fleet (WISP_REPLICAS; default one per GPU, or 2 on CPU)")
    serve.add_argument("--no-png-parameters", action="store_true",
                       help="generated PNGs carry no generation parameters (prompt, seed…) unless a request asks (WISP_PNG_PARAMETERS=0)")
    serve.set_defaults(func=cmd_serve)
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key; printed as the last line")
    create.add_argument("--team", default="default")
    create.add_argument("--data-dir", default=None)
    create.set_defaults(func=cmd_keys_create)
    listing = keys.add_parser("list", help="list keys (prefixes only)")
    listing.add_argument("--data-dir", default=None)
    listing.set_defaults(func=cmd_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key by key, id or prefix")
    revoke.add_argument("key")
    revoke.add_argument("--data-dir", default=None)
    revoke.set_defaults(func=cmd_keys_revoke)
    sources = sub.add_parser("sources", help="manage AIR sources (the `source` of source:id@version)").add_subparsers(
        dest="sources_command", required=True
    )
    screate = sources.add_parser("create", help="create a source owned by a team")
    screate.add_argument("name")
    screate.add_argument("--team", default="default")
    screate.add_argument("--data-dir", default=None)
    screate.set_defaults(func=cmd_sources_create)
    slist = sources.add_parser("list", help="list sources and their teams")
    slist.add_argument("--data-dir", default=None)
    slist.set_defaults(func=cmd_sources_list)
    usage = sub.add_parser("usage", help="model storage per team: bytes, GB-days, and cost at $0.05 per started GB per 30 days")
    usage.add_argument("--data-dir", default=None)
    usage.set_defaults(func=cmd_usage)
    from server.upload_cli import add_parser as add_upload

    add_upload(sub)
    from server.train_cli import add_parser as add_train

    add_train(sub)
    from server.teams_cli import add_parser as add_teams

    add_teams(sub)
    from server.models_cli import add_parser as add_models

    add_models(sub)
    from server.loadtest import add_arguments, cmd_loadtest

    loadtest = sub.add_parser("loadtest", help="load-test a Runware-protocol endpoint (code in server/loadtest.py)")
    add_arguments(loadtest)
    loadtest.set_defaults(func=cmd_loadtest)
    return parser


def server_ws_url(server: str) -> str:
    """A server given as ``ws(s)://…`` or ``http(s)://…``, with or without ``/v1``, as its WebSocket URL."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(server if "://" in server else f"ws://{server}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    return urlunsplit((scheme, parts.netloc, path if path.endswith("/v1") else f"{path}/v1", parts.query, ""))


def _unreachable(exc: BaseException) -> str | None:
    """One line for a failure to reach a server (the client commands' expected failure), or None."""
    import httpx
    from websockets.exceptions import InvalidHandshake, InvalidURI, WebSocketException

    if isinstance(exc, (ConnectionRefusedError, ConnectionResetError, httpx.ConnectError)):
        return "nothing answered there (is `wisp serve` running, on that host and port?)"
    if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        return "it did not answer in time"
    if isinstance(exc, InvalidURI):
        return "that is not a server URL (give ws://HOST:PORT/v1 or http://HOST:PORT)"
    if isinstance(exc, InvalidHandshake):
        return f"it did not accept a WebSocket ({exc})"
    if isinstance(exc, (WebSocketException, httpx.HTTPError, OSError)):
        return f"{type(exc).__name__}: {exc}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if isinstance(getattr(args, "server", None), str):
        args.server = server_ws_url(args.server)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        reason = _unreachable(exc)
        if reason is None:
            raise
        where = getattr(args, "server", None) or getattr(args, "url", None) or "the server"
        print(f"wisp: cannot reach {where}: {reason}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
