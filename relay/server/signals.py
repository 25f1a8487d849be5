"""Group signals: how a committed change to a group reaches everything that reacts to it.

The path of a held join request, for example:

1. ``Admissions.join`` stores the request as *held* (the group is not active yet, or
   requests are queued ahead of it) and answers the member after COMMIT; if the group
   is active it sends ``requests_waiting``.
2. The owners publish a profile that lists the relay: ``GroupService.update_profile``
   commits the activation and sends ``state_changed(group, ACTIVE)``.
3. The join worker (``relay.server.worker``) hears either signal, marks the group, and
   decides its held requests in arrival order, each decision committed with its row
   (``relay.server.decisions`` writes what goes beside it).
4. After each commit the worker sends ``decided(group, member)``, which wakes a member
   waiting for the answer (``join_status`` with ``wait``, in ``Admissions``).

Every signal is sent on the trio thread *after* the transaction that made the change
has committed, and its listeners run at once, in the order they were connected.  They
must not block or await (they mark, wake and queue).  A listener that fails is logged
and the others still run: the change has happened whatever a listener does.

- ``state_changed(group, state)``: sent by the service (activation, unlisting, operator
  actions, approval, rejection, activation time-out); heard by the join worker, the
  channels (caches; a stopped group's feeds end) and the invitation budgets.
- ``profile_changed(group, signed, state)``: sent by the service when a newer profile
  committed; heard by the channels (pushed to subscribers).
- ``requests_waiting(group)``: sent by admissions (a request queued behind others) and
  the operator port (a dead letter retried); heard by the join worker.
- ``decided(group, member)``: sent by the join worker, owners' decisions and expiry;
  heard by admissions' decision waiters.

Must not: carry anything that was not committed, or be used to ask a question (a
listener's return value is ignored).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, ParamSpec

import structlog

from relay.protocol.messages import Signed
from relay.protocol.state import GroupState

log = structlog.get_logger("relay.signals")

P = ParamSpec("P")


class Signal(Generic[P]):
    """One kind of change and its listeners."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._listeners: list[Callable[P, None]] = []

    def connect(self, listener: Callable[P, None]) -> None:
        self._listeners.append(listener)

    def send(self, *args: P.args, **kwargs: P.kwargs) -> None:
        for listener in self._listeners:
            try:
                listener(*args, **kwargs)
            except Exception:
                log.exception("signal.listener_failed", signal=self.name)


class GroupSignals:
    """The relay's signals about groups (one set per process, made at start-up)."""

    def __init__(self) -> None:
        self.state_changed: Signal[[int, GroupState]] = Signal("state_changed")
        self.profile_changed: Signal[[int, Signed, GroupState]] = Signal("profile_changed")
        self.requests_waiting: Signal[[int]] = Signal("requests_waiting")
        self.decided: Signal[[int, bytes]] = Signal("decided")
