"""The fleet bus: several ``relay serve`` processes on one PostgreSQL database act as one relay.

Each process holds its own connections, fan-out hubs and caches; everything durable is in
the database.  What one process changes, the others learn through PostgreSQL's
LISTEN/NOTIFY on one channel (``relay_fleet``), in short text payloads
``<process>:<kind>:<group>[:<extra>]``, ``process`` being the random id each process makes
at start (logged in ``relay.ready``):

- ``e`` (extra: the seq): the group has a new event.  Announced by the post's own
  transaction (``relay.store.fleet.announce``), so it is delivered only if the event
  committed, and a refused event is never announced.  The receiver's fan-out reads what it
  has not published yet from the store (``FanOut.note``): its members get every event once,
  in order, whichever process took it.
- ``t`` (extra: the place): the group's timeline has a new place, announced like ``e`` by
  the transaction that stored it; ``r``: a message of it was removed (cached frames are
  dropped); ``x`` (extra: the action and the member key in hex): a member was removed or
  banned (its feeds in this process end).  Sent by the moderation's own transaction.
- ``s``, ``p``, ``w``, ``d`` (extra for ``d``: the member key in hex): the group signals
  (``relay.server.signals``: state_changed, profile_changed, requests_waiting, decided),
  sent here after the local signal, i.e. after the commit, from a connection of their own.
  The receiver reads what it needs from the store (the state, the profile's bytes) and sends
  the signal to its own listeners only (never forwarded again): the caches of group views
  and tags are dropped, a suspended or removed group's feeds end, the join worker looks at
  the group, a member waiting for a decision is woken.

A process ignores its own payloads.  The listening connection runs on a thread of its own
(waiting at most half a second at a time, so it can stop); lost, it is opened again with a
growing back-off, and once it is back every hub reads what it may have missed, every cached
view and tag is dropped, every served group's state is read again and the join worker looks
at every group with held requests (a notification sent while nobody listened is gone).

With SQLite none of this runs: one process, one writer.

Must not: forward a signal it received from another process, trust a payload for anything
but "look at this group", or block the trio thread (the database is read through the writer,
notifications are sent from a thread).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog
import trio

from relay.protocol.state import GroupState
from relay.server.service import decode_signed
from relay.server.signals import GroupSignals
from relay.store import groups, joins
from relay.store.conn import Conn
from relay.store.errors import StoreError
from relay.store.pgnotify import Listener, Sender
from relay.store.pgurl import redacted

if TYPE_CHECKING:
    from relay.server.events import Channels
    from relay.server.worker import JoinWorker

log = structlog.get_logger("relay.fleet")

WAIT = 0.5  # seconds the listening thread waits for a notification before checking for stop
RECONNECT_BACKOFF = (0.05, 2.0)  # the first wait after a lost connection, and the longest
MAX_OUTBOX = 100_000  # payloads waiting to be sent; past it the oldest go (the receivers resync)
SEND_BATCH = 500  # payloads per NOTIFY transaction


class FleetBus:
    """One process's link to the others (see the module's docstring)."""

    def __init__(
        self,
        url: str,
        *,
        process: str,
        signals: GroupSignals,
        channels: Channels,
        worker: JoinWorker,
    ) -> None:
        self.url = url
        self.process = process
        self.signals = signals
        self.channels = channels
        self.worker = worker
        self.db = channels.db
        self._relaying = False  # a received signal is being sent locally: do not forward it
        self._outbox: list[str] = []
        self._outbox_ready = trio.Event()
        self._stale: dict[int, bool] = {}  # group -> its profile too: read and tell locally
        self._stale_ready = trio.Event()
        self._stop = threading.Event()
        self._nursery: trio.Nursery | None = None
        self.received = 0  # payloads from other processes, for tests and metrics

    # --- running -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and send until cancelled.  Ready once the first LISTEN is in place (or the
        server could not be reached: the thread keeps trying, and resyncs when it can)."""
        token = trio.lowlevel.current_trio_token()
        listener: Listener | None
        try:
            listener = await trio.to_thread.run_sync(Listener, self.url)
            log.info("fleet.listening", process=self.process, url=redacted(self.url))
        except StoreError as exc:
            listener = None
            log.warning("fleet.lost", error=str(exc), retry_in=RECONNECT_BACKOFF[0])
        self._connect_signals()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.channels.fleet_process = self.process
            self.channels.fanout.spawn = nursery.start_soon
            if self.channels.timelines is not None:
                self.channels.timelines.fanout.spawn = nursery.start_soon
            nursery.start_soon(self._send_loop)
            nursery.start_soon(self._reread_loop)
            nursery.start_soon(self._stop_when_cancelled)
            task_status.started()
            # Not abandoned on cancel: the thread returns within WAIT once told to stop.
            await trio.to_thread.run_sync(self._listen_loop, token, listener)

    async def _stop_when_cancelled(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self._stop.set()

    def _connect_signals(self) -> None:
        signals = self.signals
        signals.state_changed.connect(lambda group, state: self._forward("s", group))
        signals.profile_changed.connect(lambda group, profile, state: self._forward("p", group))
        signals.requests_waiting.connect(lambda group: self._forward("w", group))
        signals.decided.connect(lambda group, member: self._forward("d", group, member.hex()))

    # --- sending -----------------------------------------------------------------------

    def _forward(self, kind: str, group_id: int, extra: str = "") -> None:
        """A local signal (its change committed): tell the other processes."""
        if self._relaying:
            return
        payload = f"{self.process}:{kind}:{group_id}" + (f":{extra}" if extra else "")
        self._outbox.append(payload)
        if len(self._outbox) > MAX_OUTBOX:
            del self._outbox[: len(self._outbox) - MAX_OUTBOX]
        self._outbox_ready.set()

    async def _send_loop(self) -> None:
        sender: list[Sender | None] = [None]  # used on the sending thread only
        wait = RECONNECT_BACKOFF[0]
        try:
            while True:
                await self._outbox_ready.wait()
                self._outbox_ready = trio.Event()
                while self._outbox:
                    batch = self._outbox[:SEND_BATCH]
                    try:
                        await trio.to_thread.run_sync(_send, self.url, sender, batch)
                    except StoreError as exc:
                        log.warning("fleet.send_failed", error=str(exc), payloads=len(batch), retry_in=wait)
                        await trio.sleep(wait)
                        wait = min(wait * 2, RECONNECT_BACKOFF[1])
                        continue
                    wait = RECONNECT_BACKOFF[0]
                    del self._outbox[: len(batch)]
        finally:
            if sender[0] is not None:
                sender[0].close()

    # --- receiving ---------------------------------------------------------------------

    def _listen_loop(self, token: trio.lowlevel.TrioToken, listener: Listener | None) -> None:
        """The listening thread: hand payloads to the trio thread; reconnect when lost."""
        wait = RECONNECT_BACKOFF[0]
        while not self._stop.is_set():
            if listener is None:
                try:
                    listener = Listener(self.url)
                except StoreError as exc:
                    token.run_sync_soon(self._lost, str(exc), wait)
                    self._stop.wait(wait)
                    wait = min(wait * 2, RECONNECT_BACKOFF[1])
                    continue
                wait = RECONNECT_BACKOFF[0]
                token.run_sync_soon(self._reconnected)
            try:
                while not self._stop.is_set():
                    payloads = listener.wait(WAIT)
                    if payloads:
                        token.run_sync_soon(self._received, payloads)
            except StoreError as exc:
                token.run_sync_soon(self._lost, str(exc), wait)
            finally:
                listener.close()
                listener = None

    def _lost(self, error: str, retry_in: float) -> None:
        log.warning("fleet.lost", error=error, retry_in=retry_in)

    def _reconnected(self) -> None:
        """Listening again: whatever was announced meanwhile is gone, so look at everything."""
        hubs = len(self.channels.fanout.hubs)
        log.info("fleet.resync", process=self.process, hubs=hubs)
        self.channels.forget_all()
        self.channels.fanout.resync()
        if self.channels.timelines is not None:
            self.channels.timelines.fanout.resync()
            self.channels.timelines.forget()
        for group_id in self.channels.fanout.hubs:
            self._stale.setdefault(group_id, False)
        self._stale_ready.set()
        if self._nursery is not None:
            self._nursery.start_soon(self._mark_held)

    async def _mark_held(self) -> None:
        try:
            held = await self.db.transact(joins.groups_with_held)
        except StoreError:
            return  # the worker retries on its own schedule; the next resync reads again
        for group_id in held:
            self.worker.mark(group_id)

    def _received(self, payloads: list[str]) -> None:
        """Payloads from the listening thread, in the order PostgreSQL delivered them."""
        for payload in payloads:
            process, _, rest = payload.partition(":")
            if process == self.process:
                continue
            kind, _, rest = rest.partition(":")
            group_text, _, extra = rest.partition(":")
            try:
                group_id = int(group_text)
                if kind == "e":
                    self.channels.fanout.note(group_id, int(extra))
                elif kind in ("t", "r", "x"):
                    self._timeline(kind, group_id, extra)
                elif kind in ("s", "p"):
                    self._stale[group_id] = self._stale.get(group_id, False) or kind == "p"
                    self._stale_ready.set()
                elif kind == "w":
                    self._tell(self.signals.requests_waiting.send, group_id)
                elif kind == "d":
                    self._tell(self.signals.decided.send, group_id, bytes.fromhex(extra))
                else:
                    raise ValueError(kind)
            except ValueError:
                log.warning("fleet.bad_payload", payload=payload[:80])
                continue
            self.received += 1

    def _timeline(self, kind: str, group_id: int, extra: str) -> None:
        """A group's timeline changed in another process: a new place (``t``), a message
        removed (``r``: cached frames may hold it), a member removed or banned (``x``: its
        feeds here end)."""
        timelines = self.channels.timelines
        if timelines is None:
            return
        if kind == "t":
            timelines.fanout.note(group_id, int(extra))
        elif kind == "r":
            timelines.removed(group_id)
        else:
            action, _, member = extra.partition(":")
            timelines.member_ended(group_id, action, bytes.fromhex(member))

    def _tell(self, send: Callable[..., None], *args: Any) -> None:
        """Send a signal to this process's listeners only."""
        self._relaying = True
        try:
            send(*args)
        finally:
            self._relaying = False

    async def _reread_loop(self) -> None:
        """Read the groups other processes changed, then tell the local listeners."""
        while True:
            await self._stale_ready.wait()
            self._stale_ready = trio.Event()
            stale, self._stale = self._stale, {}
            if not stale:
                continue
            try:
                found = await self.db.transact(partial(_records, group_ids=list(stale)))
            except StoreError as exc:
                log.warning("fleet.read_failed", error=str(exc), groups=len(stale))
                for group_id, profile in stale.items():
                    self._stale[group_id] = self._stale.get(group_id, False) or profile
                await trio.sleep(RECONNECT_BACKOFF[1])
                self._stale_ready.set()
                continue
            for group_id, profile in stale.items():
                record = found.get(group_id)
                if record is None:  # forgotten (a closed group pruned): stop serving it
                    self._tell(self.signals.state_changed.send, group_id, GroupState.REMOVED)
                    continue
                blob, state = record
                if profile and blob:
                    self._tell(self.signals.profile_changed.send, group_id, decode_signed(blob), state)
                self._tell(self.signals.state_changed.send, group_id, state)


def _records(conn: Conn, *, group_ids: list[int]) -> dict[int, tuple[bytes, GroupState]]:
    found: dict[int, tuple[bytes, GroupState]] = {}
    for group_id in group_ids:
        record = groups.by_id(conn, group_id)
        if record is not None:
            found[group_id] = (record.profile, record.state)
    return found


def _send(url: str, holder: list[Sender | None], payloads: list[str]) -> None:
    """On a worker thread: send with the held connection, opening it if needed."""
    sender = holder[0]
    if sender is None:
        sender = holder[0] = Sender(url)
    try:
        sender.send(payloads)
    except StoreError:
        sender.close()
        holder[0] = None
        raise
