"""The baseline server: a trivial trio-websocket echo server on loopback port 0.

Run as ``python -m benchmarks.echo_server``; it logs one ``echo.ready`` JSON line with the bound
``listen`` address (like the relay's ``relay.ready``) and echoes every message until the client
closes.  It does no work of its own, so a client loop against it measures what a fresh WebSocket
connection plus one round trip costs on this machine.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from functools import partial

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

MAX_MESSAGE = 1024 * 1024


async def echo(request: WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed:
        pass


async def main() -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(serve_websocket, echo, "127.0.0.1", 0, None, max_message_size=MAX_MESSAGE)
        )
        print(json.dumps({"event": "echo.ready", "listen": f"127.0.0.1:{server.port}", "pid": os.getpid()}))
        sys.stdout.flush()
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    trio.run(main)
