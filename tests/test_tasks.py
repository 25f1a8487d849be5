"""A connection's helper tasks (relay.server.tasks) and WebSocket.interrupt, on real sockets.

The end-to-end tests (tests/test_events.py: a stalled member disconnected, feeds ended on
suspend) go through these; here are the guarantees the connection relies on, one by one.
"""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing
from wsproto.connection import Connection, ConnectionType

from relay.server.http import ConnectionClosed, WebSocket
from relay.server.tasks import ConnectionTasks


class Ends:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


async def test_a_failing_helper_ends_only_its_connection(autojump_clock: trio.testing.MockClock) -> None:
    ends, other_ends = Ends(), Ends()
    survived = trio.Event()
    async with trio.open_nursery() as nursery:
        tasks = ConnectionTasks(nursery, ends)
        others = ConnectionTasks(nursery, other_ends)

        async def fails() -> None:
            raise RuntimeError("a bug in a sender")

        async def goes_on() -> None:
            await trio.sleep(0.05)
            survived.set()

        others.start_soon(goes_on)
        tasks.start_soon(fails)
        await survived.wait()
    assert ends.count == 1  # its connection was told to end
    assert other_ends.count == 0  # the other connection and the shared nursery went on


async def test_aclose_cancels_running_helpers_and_waits_for_them() -> None:
    finished: list[str] = []
    async with trio.open_nursery() as nursery:
        tasks = ConnectionTasks(nursery, Ends())

        async def sends_for_ever() -> None:
            try:
                await trio.sleep_forever()
            finally:
                finished.append("sender")

        tasks.start_soon(sends_for_ever)
        await trio.testing.wait_all_tasks_blocked()  # it started and waits
        await tasks.aclose()
        assert finished == ["sender"]  # gone before aclose returned, not later
        started: list[int] = []

        async def too_late() -> None:
            started.append(1)

        tasks.start_soon(too_late)  # the connection is closing: no new helper
        await trio.testing.wait_all_tasks_blocked()  # it would have run by now
        assert started == []


async def test_end_connection_cancels_the_other_helpers(autojump_clock: trio.testing.MockClock) -> None:
    ends = Ends()
    cancelled = trio.Event()
    async with trio.open_nursery() as nursery:
        tasks = ConnectionTasks(nursery, ends)

        async def waits() -> None:
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                cancelled.set()
                raise

        async def ends_it() -> None:
            await trio.sleep(0.01)
            tasks.end_connection()

        tasks.start_soon(waits)
        tasks.start_soon(ends_it)
        with trio.fail_after(5):
            await cancelled.wait()
    assert ends.count == 1


async def _websocket_pair() -> tuple[WebSocket, trio.SocketStream]:
    a, b = socket.socketpair()
    server = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    peer = trio.SocketStream(trio.socket.from_stdlib_socket(b))
    return WebSocket(server, Connection(ConnectionType.SERVER), 1024), peer


async def test_interrupt_wakes_a_reader_waiting_for_the_socket() -> None:
    ws, peer = await _websocket_pair()
    outcome: list[str] = []

    async def reader() -> None:
        try:
            await ws.receive()
        except ConnectionClosed:
            outcome.append("closed")

    with trio.fail_after(5):  # not woken: the test fails instead of hanging
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()  # parked in wait_readable, no cancel scope
            assert outcome == []
            ws.interrupt()
    assert outcome == ["closed"]
    with pytest.raises(ConnectionClosed):  # and nothing is read after it
        await ws.receive()
    with pytest.raises(ConnectionClosed):  # or written (the peer may be reading nothing)
        await ws.send(b"a reply already on its way")
    assert not ws.send_now(b"an event")
    await peer.aclose()
