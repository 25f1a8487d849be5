"""Client loads: N concurrent tasks, each doing one operation after another on a fresh connection.

Three operations, all through the same client stack the project ships (trio-websocket):

- ``invite``: :func:`relay.client.add_relay` with a channel made beforehand by
  :func:`relay.client.create_channel` (key generation is client-side only, so it stays out of the
  timed section): hello/welcome with the relay's identity proof, a sealed owner-signed
  invitation, the signed address grant checked.  Counts only ``accepted`` answers.
- ``publish``: :func:`relay.client.publish` for a channel the relay accepted: a signed profile
  listing the group address, on a fresh connection to that address; counts ``active`` answers.
- ``echo``: the baseline, against :mod:`benchmarks.echo_server`: open a fresh WebSocket, one round
  trip of a message the size of an ``invite`` frame, close.

:func:`run_load` runs one load in this process; :mod:`benchmarks.worker` runs it in another.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import trio
from trio_websocket import open_websocket_url

from relay.client import OwnerState, RelayError, add_relay, create_channel, publish

# An ``invite`` frame with the hybrid suite (ML-KEM-768 + X25519) and a short profile is
# about this size; the baseline sends the same number of bytes.
INVITE_FRAME_BYTES = 2000
OP_TIMEOUT = 60.0
MAX_ERROR_SAMPLES = 5


@dataclass
class Channel:
    state: OwnerState
    path: Path


def make_channels(count: int, folder: Path, prefix: str = "c") -> list[Channel]:
    """``count`` new channels (root key, owner key, cert); their state files go in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        Channel(
            create_channel(
                f"Bench channel {prefix}{i}", description="Daily figures from the benchmark suite"
            ),
            folder / f"{prefix}{i}.json",
        )
        for i in range(count)
    ]


@dataclass
class LoadResult:
    ok: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    elapsed: float = 0.0  # wall seconds, first operation started to last one finished
    cpu: float = 0.0  # CPU seconds this client process used meanwhile
    latencies: list[float] = field(default_factory=list)  # seconds per successful operation

    def merge(self, other: LoadResult) -> None:
        self.ok += other.ok
        self.errors += other.errors
        self.error_samples += other.error_samples[: MAX_ERROR_SAMPLES - len(self.error_samples)]
        self.cpu += other.cpu
        self.latencies += other.latencies

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadResult:
        return cls(**data)


Operation = Callable[[int], Awaitable[bool]]


def invite_op(channels: Sequence[Channel], contact: str) -> Operation:
    async def op(i: int) -> bool:
        channel = channels[i]
        result = await add_relay(channel.state, channel.path, contact, timeout=OP_TIMEOUT)
        if result.status != "accepted":
            raise RelayError(f"{result.status}: {result.code}: {result.reason}")
        return True

    return op


def publish_op(channels: Sequence[Channel]) -> Operation:
    async def op(i: int) -> bool:
        channel = channels[i]
        result = await publish(channel.state, channel.path, timeout=OP_TIMEOUT)
        outcomes = result.relays
        if len(outcomes) != 1 or outcomes[0].get("state") != "active":
            raise RelayError(f"not activated: {outcomes}")
        return True

    return op


def echo_op(listen: str, size: int = INVITE_FRAME_BYTES) -> Operation:
    url = f"ws://{listen}/"
    payload = secrets.token_bytes(size)

    async def op(i: int) -> bool:
        async with open_websocket_url(
            url, max_message_size=1024 * 1024, connect_timeout=OP_TIMEOUT, disconnect_timeout=2
        ) as ws:
            with trio.fail_after(OP_TIMEOUT):
                await ws.send_message(payload)
                answer = await ws.get_message()
        if answer != payload:
            raise RelayError("the echo server answered something else")
        return True

    return op


async def run_load(op: Operation, count: int, tasks: int) -> LoadResult:
    """Run ``op(0)`` .. ``op(count - 1)`` with ``tasks`` concurrent workers; time it all."""
    result = LoadResult()
    next_index = iter(range(count))
    me = psutil.Process()

    async def worker() -> None:
        for i in next_index:  # shared iterator: each index is taken by exactly one worker
            started = time.perf_counter()
            try:
                await op(i)
            except Exception as exc:  # one failed operation is counted, never stops the load
                result.errors += 1
                if len(result.error_samples) < MAX_ERROR_SAMPLES:
                    result.error_samples.append(f"{type(exc).__name__}: {exc}")
                continue
            result.ok += 1
            result.latencies.append(time.perf_counter() - started)

    cpu_before = sum(me.cpu_times()[:2])
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(worker)
    result.elapsed = time.perf_counter() - started
    result.cpu = sum(me.cpu_times()[:2]) - cpu_before
    return result
