"""The protocol baseline: bare ``websockets`` doing the minimum to answer a ping.

Run by ``bench/protocol.py`` as a subprocess, exactly as wisp is, so both
servers are measured the same way: own process, own event loop, loopback.
It uses what wisp uses (``websockets.asyncio.server.serve`` on uvloop, no
compression, the same keepalive settings) and, for every message, sends back
the very bytes wisp sends for a ping, so the client does identical work for
both.  What it does not do is what wisp adds: the HTTP/WebSocket sniffing
connection, frame decoding and validation, dispatch and session checks.

Usage: ``python bench/echo_server.py [--port 0] [--mode pong|echo]``; prints
``echo listening on ws://127.0.0.1:PORT/v1`` when it accepts connections and
stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Awaitable, Callable

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

PONG = b'{"data":[{"taskType":"ping","pong":true}]}'
"""wisp's reply to ``[{"taskType":"ping","ping":true}]``, byte for byte."""


def make_handler(mode: str) -> Callable[[ServerConnection], Awaitable[None]]:
    """``pong``: answer every message with :data:`PONG`; ``echo``: send it back."""

    async def pong(ws: ServerConnection) -> None:
        try:
            while True:
                await ws.recv(decode=False)
                await ws.send(PONG, text=True)
        except ConnectionClosed:
            pass

    async def echo(ws: ServerConnection) -> None:
        try:
            while True:
                await ws.send(await ws.recv(decode=False), text=True)
        except ConnectionClosed:
            pass

    return pong if mode == "pong" else echo


async def main(host: str, port: int, mode: str) -> None:
    # Same knobs wisp passes to serve() (server/app.py), minus its own hooks.
    async with serve(
        make_handler(mode),
        host,
        port,
        compression=None,
        max_size=64 * 1024 * 1024,
        ping_interval=20,
        ping_timeout=20,
    ) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"echo listening on ws://{host}:{bound}/v1", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", choices=("pong", "echo"), default="pong")
    parser.add_argument("--asyncio", action="store_true", help="use the stdlib event loop instead of uvloop")
    args = parser.parse_args()
    if args.asyncio:
        asyncio.run(main(args.host, args.port, args.mode))
    else:
        import uvloop

        uvloop.run(main(args.host, args.port, args.mode))
    return 0


if __name__ == "__main__":
    sys.exit(run())
