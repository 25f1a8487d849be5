"""``python -m benchmarks.held_memory``: the relay's memory while clients hold partly sent messages,
and after they leave.

The attack of issue 13 (6): each attacker opens a WebSocket, sends ``hello``, then the first
bytes of a message of the largest size allowed (``server.max_frame_bytes``), and never the
rest.  The relay must hold what it received until the message completes, the connection
ends or ``server.message_timeout`` passes.  Measured from outside (psutil), on the real
``relay serve`` with its defaults:

- RSS **before** (after a warm-up of ordinary sessions), the **peak** while ``--sessions``
  attackers (spread over ``--sources`` loopback addresses, 127.0.0.16 on) hold their messages
  for ``--hold`` seconds, and **after**, ``--after`` seconds once they have all gone;
- how many the relay let hold a message and how many it closed (``unavailable``: the
  buffered-bytes budget), and its ``relay_buffered_bytes`` gauge at the peak.

``--pythonpath DIR`` runs the relay from another checkout (``git archive`` of main, say) for a
before/after comparison.  Numbers depend on the machine; run on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from benchmarks import wsframe
from benchmarks.daemon import Daemon, read_metrics
from relay.protocol.encoding import encode
from relay.protocol.messages import PROTOCOL_VERSION, Hello

MAX_FRAME = 256 * 1024  # the relay's default max_frame_bytes


def hello_frame() -> bytes:
    return wsframe.frame(encode(Hello(version=PROTOCOL_VERSION, nonce=secrets.token_bytes(32))), masked=True)


async def greet(host: str, port: int, local: str) -> tuple[trio.SocketStream, wsframe.Parser] | None:
    """A greeted WebSocket on ``/r`` from ``local``; None if the relay refused it."""
    try:
        stream = await trio.open_tcp_stream(host, port, local_address=local)
    except OSError:
        return None
    try:
        await stream.send_all(wsframe.upgrade_request(f"{host}:{port}", "/r"))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(4096)
            if not chunk:
                raise trio.BrokenResourceError
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise trio.BrokenResourceError
        parser = wsframe.Parser()
        rest = head.split(b"\r\n\r\n", 1)[1]
        await stream.send_all(hello_frame())
        messages = parser.feed(rest) if rest else []
        while not messages:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise trio.BrokenResourceError
            messages = parser.feed(chunk)
        return stream, parser
    except (trio.BrokenResourceError, OSError):
        await stream.aclose()
        return None


async def attack(args: argparse.Namespace, host: str, port: int, daemon: Daemon) -> dict[str, Any]:
    # The first ``--bytes`` of a message of the largest size allowed (none: greeted sessions only).
    whole = wsframe.frame(b"\0" * MAX_FRAME, masked=True)
    partial = whole[: len(whole) - MAX_FRAME + args.bytes] if args.bytes else b""  # header + bytes
    streams: list[trio.SocketStream] = []
    refused_at_connect = 0
    peak = 0
    peak_buffered = 0.0
    limiter = trio.CapacityLimiter(64)
    sampling = True

    async def sample() -> None:
        nonlocal peak, peak_buffered
        while sampling:
            peak = max(peak, daemon.rss())
            metrics = await trio.to_thread.run_sync(read_metrics, daemon)
            peak_buffered = max(peak_buffered, metrics.get("relay_buffered_bytes", 0.0))
            await trio.sleep(0.25)

    async def one(n: int) -> None:
        nonlocal refused_at_connect
        local = f"127.0.0.{16 + n % args.sources}"
        async with limiter:
            greeted = await greet(host, port, local)
            if greeted is None:
                refused_at_connect += 1
                return
            stream, _ = greeted
            try:
                if partial:
                    await stream.send_all(partial)
            except (trio.BrokenResourceError, OSError):
                pass
            streams.append(stream)

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        async with trio.open_nursery() as openers:
            for n in range(args.sessions):
                openers.start_soon(one, n)
        opened = time.monotonic() - started
        await trio.sleep(args.hold)
        # Which of them the relay still holds: a closed one reads as the end of its stream.
        alive = 0
        for stream in streams:
            with trio.move_on_after(0.001):
                try:
                    while await stream.receive_some(65536):
                        pass
                except (trio.BrokenResourceError, OSError):
                    pass
                continue
            alive += 1
        sampling = False
    during_metrics = read_metrics(daemon)
    for stream in streams:
        await stream.aclose()
    return {
        "sessions": args.sessions,
        "sources": args.sources,
        "seconds_to_open": round(opened, 2),
        "refused_at_connect": refused_at_connect,
        "holding_at_end_of_hold": alive,
        "rss_peak": peak,
        "buffered_bytes_peak": peak_buffered,
        "bounds_hit": {
            key.split('"')[1]: value
            for key, value in during_metrics.items()
            if key.startswith("relay_bounds_hit_total{")
        },
        "refusals": {
            key.split('"')[1]: value
            for key, value in during_metrics.items()
            if key.startswith("relay_refusals_total{")
        },
    }


async def warm_up(host: str, port: int, sessions: int) -> None:
    for n in range(sessions):
        greeted = await greet(host, port, f"127.0.0.{16 + n % 4}")
        if greeted is not None:
            await greeted[0].aclose()


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="relay-bench-held-"))
    config = work / "relay.toml"
    extra = f"message_timeout = {args.message_timeout}\n" if args.message_timeout else ""
    config.write_text("# Written by python -m benchmarks.held_memory: the defaults.\n[server]\n" + extra)
    if args.pythonpath:
        # ``python -m`` puts the working folder first on the path: start the relay from there.
        os.environ["PYTHONPATH"] = str(Path(args.pythonpath).resolve())
        os.chdir(args.pythonpath)
    command = ["relay", "serve", "--data", str(work / "data"), "--config", str(config)]
    daemon = Daemon([*command, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"], work).start()
    try:
        host, port = daemon.listen.rsplit(":", 1)
        trio.run(warm_up, host, int(port), 50)
        time.sleep(2)
        before = daemon.rss()
        rounds = []
        for _ in range(args.rounds):
            out = trio.run(attack, args, host, int(port), daemon)
            time.sleep(args.after)
            after = daemon.rss()
            out.update(
                rss_after=after,
                after_vs_before=round(after / before, 3),
                peak_growth_per_session=round((out["rss_peak"] - before) / args.sessions),
                buffered_bytes_after=read_metrics(daemon).get("relay_buffered_bytes", 0.0),
            )
            rounds.append(out)
        return {"rss_before": before, "after_seconds": args.after, "rounds": rounds}
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.held_memory", description=__doc__.split("\n")[0])
    p.add_argument("--sessions", type=int, default=1000, help="attackers holding a message (default 1000)")
    p.add_argument("--sources", type=int, default=16, help="loopback addresses they come from (default 16)")
    p.add_argument(
        "--bytes",
        type=int,
        default=MAX_FRAME - 1024,
        help=f"bytes of the message each sends (default {MAX_FRAME - 1024}; 0: only hello)",
    )
    p.add_argument("--hold", type=float, default=5.0, help="seconds they hold once all sent (default 5)")
    p.add_argument("--after", type=float, default=30.0, help="seconds after they leave (default 30)")
    p.add_argument("--rounds", type=int, default=1, help="attacks one after the other (default 1)")
    p.add_argument("--message-timeout", type=float, help="server.message_timeout (default: the relay's)")
    p.add_argument("--pythonpath", help="run the relay from this source folder instead")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    out = run(args)
    mib = 1024 * 1024
    print(f"RSS before: {out['rss_before'] / mib:.1f} MiB")
    for n, one in enumerate(out["rounds"], 1):
        print(
            f"round {n}: peak {one['rss_peak'] / mib:.1f} MiB with {args.sessions} sessions "
            f"({one['holding_at_end_of_hold']} still holding after {args.hold:g} s; buffered peak "
            f"{one['buffered_bytes_peak'] / mib:.1f} MiB), {args.after:g} s after they left "
            f"{one['rss_after'] / mib:.1f} MiB ({one['after_vs_before']:.2f} of before)"
        )
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
