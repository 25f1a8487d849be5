"""The owner posts: one signed event, chained onto the newest verified head, sent to every relay.

Before signing, every listed relay is asked for its signed head (``head_request``
on its group address; the answer carries the event at the head).  Each head is
verified against the relay's pinned key, and its event against the channel's
owners; the newest such event (or the owner's own newest, if newer) is the one the
new event chains onto, so two owners posting from two machines follow each other.
The event is signed once, saved in the owner's bounded local history *before*
anything is sent, and the same signed bytes go to every relay, concurrently.  If no
relay can be reached nothing is signed or saved; if every relay that was sent the
event refused it (a suspended group, say), it leaves the history again, so that no
later post delivers it as a repair.

A relay that answers ``event_gap`` missed earlier events (it was down, or a post
failed half-way): it is sent the events after its head from the local history,
oldest first, then the new one.  The history keeps the newest ``HISTORY_KEEP``
events; a relay further behind than that is reported, not repaired.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from relay.client.connection import RelaySession, open_session
from relay.client.errors import RelayError, RelayProtocolError, RelayRefused, translated
from relay.client.owner import OwnerState, RelayEntry, serving_relays
from relay.protocol import crypto
from relay.protocol.addresses import parse_address
from relay.protocol.encoding import b64d, b64e, decode, encode
from relay.protocol.errors import ErrorCode, ProtocolError
from relay.protocol.events import (
    CONTENT_TEXT,
    MAX_EVENT_BODY,
    ChainHead,
    VerifiedEvent,
    make_event,
    stored_event,
    verify_event,
)
from relay.protocol.heads import verify_head
from relay.protocol.messages import HeadAnswer, HeadRequest, Post, PostResult, Signed
from relay.protocol.profile import verify_owner_chain

HISTORY_KEEP = 256


@dataclass
class RelayPost:
    """What one relay answered."""

    relay: str  # the group address
    status: str  # "stored" | "duplicate" | "error"
    code: str | None = None
    reason: str | None = None
    repaired: int = 0  # earlier events re-sent to it first


@dataclass
class PostOutcome:
    seq: int  # 0 when nothing was sent
    id: str  # b64
    relays: list[RelayPost] = field(default_factory=list)
    sent: bool = True  # False: no relay could be reached, nothing was signed or saved


@dataclass
class _Head:
    entry: RelayEntry
    seq: int = 0
    event: VerifiedEvent | None = None
    error: RelayError | None = None
    connected: bool = False  # a session with the relay was open
    sent: bool = False  # the new event went out to it
    refused: bool = False  # and it answered with a refusal: it did not store it


def local_history(state: OwnerState) -> list[VerifiedEvent]:
    return [
        stored_event(decode(b64d(raw), Signed, limit=2 * MAX_EVENT_BODY, what="history"))
        for raw in state.history
    ]


def remember(state: OwnerState, event: VerifiedEvent) -> None:
    """Append to the bounded history; an event that does not follow the last one starts it afresh."""
    history = local_history(state)
    if history and (event.seq <= history[-1].seq or event.event.prev != history[-1].id):
        if any(e.id == event.id for e in history):
            return
        state.history = []
    state.history.append(b64e(encode(event.signed)))
    del state.history[:-HISTORY_KEEP]


async def post(
    state: OwnerState,
    path: Path,
    body: bytes,
    *,
    content_type: str = CONTENT_TEXT,
    timeout: float = 15.0,
) -> PostOutcome:
    """Sign one event after the newest verified head and store it on every listed relay."""
    targets = serving_relays(state)
    if len(body) > MAX_EVENT_BODY:
        raise RelayError(
            f"the post is {len(body)} bytes; the limit is {MAX_EVENT_BODY}", code="event_too_large"
        )
    owners = verify_owner_chain(state.channel, state.root_public_key, state.owner_certs())
    heads = [_Head(entry) for entry in targets]
    results = [RelayPost(relay=str(h.entry.group_address), status="error") for h in heads]
    # One connection per relay for both steps: the head is asked, every task waits for the
    # event to be signed, then posts it on the same connection.
    reported_send, reported = trio.open_memory_channel[None](len(heads))
    signed_box: list[VerifiedEvent] = []
    ready = trio.Event()
    async with trio.open_nursery() as nursery:
        for head, result in zip(heads, results, strict=True):
            nursery.start_soon(
                _relay_post, state, owners, head, result, reported_send, signed_box, ready, timeout
            )
        for _ in heads:
            await reported.receive()
        if not any(head.connected for head in heads):
            return PostOutcome(seq=0, id="", relays=results, sent=False)
        base = _newest(state, heads)
        before = list(state.history)
        signed = make_event(
            state.owner_key,
            channel=state.channel,
            after=base,
            body=body,
            now=int(time.time()),
            content_type=content_type,
        )
        event = stored_event(signed)
        remember(state, event)
        state.save(path)  # kept before any relay sees it: a relay that misses it is repaired later
        signed_box.append(event)
        ready.set()
    if all(head.refused or not head.sent for head in heads):
        state.history = before  # no relay stored it: a later repair must not deliver it
        state.save(path)
    return PostOutcome(seq=event.seq, id=b64e(event.id), relays=results)


async def _relay_post(
    state: OwnerState,
    owners: frozenset[bytes],
    head: _Head,
    result: RelayPost,
    reported: trio.MemorySendChannel[None],
    signed_box: list[VerifiedEvent],
    ready: trio.Event,
    timeout: float,
) -> None:
    """One relay: its head (reported to :func:`post` whatever happens), then the post."""
    told = False
    try:
        address = parse_address(str(head.entry.group_address))
        async with open_session(address, timeout=timeout) as session:
            head.connected = True
            await _fetch_head(session, head, state, owners)
            reported.send_nowait(None)
            told = True
            await ready.wait()
            event = signed_box[0]
            head.sent = True
            try:
                try:
                    answer = await _post(session, event.signed)
                except RelayRefused as exc:
                    if exc.code != ErrorCode.EVENT_GAP:
                        raise
                    result.repaired = await _repair(session, state, event)
                    answer = await _post(session, event.signed)
            except RelayRefused:
                head.refused = True
                raise
        result.status = answer.status
    except RelayError as exc:
        result.code, result.reason = exc.code, exc.reason
    finally:
        if not told:
            reported.send_nowait(None)


async def _fetch_head(
    session: RelaySession, head: _Head, state: OwnerState, owners: frozenset[bytes]
) -> None:
    """The relay's signed head and the event at it, verified; a failure is kept, not raised:
    the relay still gets the post (and is repaired if it lacks events)."""
    try:
        answer = await session.request(HeadRequest())
        if not isinstance(answer, HeadAnswer):
            raise RelayProtocolError(f"expected head, got {type(answer).__name__}")
        verified = verify_head(answer.head, relay_key=session.card.relay_key, channel=state.channel)
        head.seq = verified.head.seq
        if head.seq == 0:
            return
        if answer.event is None:
            raise RelayProtocolError("the head came without its event", code="bad_head")
        # Authorisation over time: an owner removed since may have posted the head; its event
        # is history the next one chains over.  Any other signer is a relay's invention.
        known = {e.id for e in local_history(state)}
        former = {b64d(k) for k in state.former_owners}
        signer_ok = owners | former | ({answer.event.signer} if _id_of(answer.event) in known else set())
        event = verify_event(answer.event, channel=state.channel, owners=frozenset(signer_ok))
        if event.seq != head.seq or not crypto.same_secret(event.id, verified.head.id):
            raise RelayProtocolError("the event sent with the head is not the one it names", code="bad_head")
        head.event = event
    except ProtocolError as exc:
        head.error = RelayProtocolError(exc.reason, code=exc.code.value)
    except RelayRefused as exc:
        head.error = exc


def _id_of(signed: Signed) -> bytes:
    return stored_event(signed).id


def _newest(state: OwnerState, heads: list[_Head]) -> ChainHead:
    """The event to chain onto: the newest verified head, or our own newest if it is newer.

    Two relays holding different events at one sequence number (an owners' fork) are both
    verified; the one our own history holds wins, else the first relay's.
    """
    history = local_history(state)
    mine = {e.id for e in history}
    best: VerifiedEvent | None = history[-1] if history else None
    for head in heads:
        event = head.event
        if event is None:
            continue
        if best is None or event.seq > best.seq or (event.seq == best.seq and event.id in mine):
            best = event
    if best is None:
        return ChainHead()
    if history and best.id not in mine:
        remember(state, best)  # another owner's post: the next repair starts from it
    return ChainHead.of(best)


async def _post(session: RelaySession, signed: Signed) -> PostResult:
    answer = await session.request(Post(event=signed))
    if not isinstance(answer, PostResult):
        raise RelayProtocolError(f"expected post_result, got {type(answer).__name__}")
    return answer


async def _repair(session: RelaySession, state: OwnerState, event: VerifiedEvent) -> int:
    """Send the relay the events after its head, from the local history, oldest first."""
    answer = await session.request(HeadRequest())
    if not isinstance(answer, HeadAnswer):
        raise RelayProtocolError(f"expected head, got {type(answer).__name__}")
    with translated():
        at = verify_head(answer.head, relay_key=session.card.relay_key, channel=state.channel).head.seq
    missing = [e for e in local_history(state) if at < e.seq < event.seq]
    if not missing or missing[0].seq != at + 1:
        first = missing[0].seq if missing else event.seq
        raise RelayError(
            f"the relay is at event {at}; the local history starts at {first}, "
            "so it cannot be repaired from here",
            code=ErrorCode.EVENT_GAP.value,
        )
    for earlier in missing:
        await _post(session, earlier.signed)
    return len(missing)
