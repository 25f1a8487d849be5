"""A member posts: one signed message, chained onto the member's own last one, sent to every relay.

A member's messages form a hash chain of their own (``seq``, ``prev``): the head of it
(seq, id, created_at) and the newest messages are kept in the member state file, so the chain
survives between commands.  The message is signed once, saved in the file *before* any relay
sees it, and the same bytes go to every relay of the group at once (``member_post`` on its
group address), with the member's cert when the file holds one (learnt from a read), for a
relay that has not seen it yet.  A relay that answers ``event_gap`` missed earlier messages:
it is sent them from the file's history, oldest first, then the new one.  If no relay could be
reached, or every relay that was sent the message refused it, the message leaves the file
again, so the next one takes its place in the chain.

What the profile says (member messages off, the owners' size limit, a channel's comments
that must reply to an owner post) is checked here first, so that the common mistakes cost no
signature and no connection; the relays check it all again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from relay.client.connection import RelaySession, open_session
from relay.client.errors import RelayError, RelayProtocolError, RelayRefused, translated
from relay.client.member import MemberState
from relay.client.moderation import RelayPublish, member_relays
from relay.protocol.addresses import parse_address
from relay.protocol.encoding import b64d, b64e, decode, encode
from relay.protocol.errors import ErrorCode
from relay.protocol.events import CONTENT_TEXT
from relay.protocol.messages import MemberMessage, MemberPost, MemberPostResult, Signed
from relay.protocol.timeline import MAX_MESSAGE_BODY as MAX_MESSAGE
from relay.protocol.timeline import MESSAGE_OVERHEAD, AuthorHead, make_message, stored_message

HISTORY_KEEP = 64  # own messages kept for repairs


@dataclass
class RelayMessage(RelayPublish):
    """What one relay answered to the message (a timeline entry, as a published one is)."""

    repaired: int = 0  # earlier messages re-sent to it first
    sent: bool = False
    refused: bool = False


@dataclass
class MessageOutcome:
    seq: int
    id: str  # b64
    relays: list[RelayMessage] = field(default_factory=list)
    sent: bool = True  # False: no relay could be reached; nothing was kept


def _own(raw: str) -> tuple[Signed, MemberMessage]:
    signed = decode(b64d(raw), Signed, limit=2 * (MAX_MESSAGE + MESSAGE_OVERHEAD), what="message")
    return signed, decode(signed.body, MemberMessage, limit=MAX_MESSAGE + MESSAGE_OVERHEAD, what="message")


def head_of(state: MemberState) -> AuthorHead:
    if state.author_seq == 0:
        return AuthorHead()
    return AuthorHead(seq=state.author_seq, id=b64d(state.author_id), created_at=state.author_created_at)


def resolve_reply(state: MemberState, ref: str) -> bytes:
    """``#SEQ`` (an owner post a read showed this member) or an id as a read prints it."""
    if ref.startswith("#") or ref.isdigit():
        known = state.post_ids.get(ref.lstrip("#"))
        if known is None:
            raise RelayError(
                f"no owner post {ref} in this member file yet; run 'relay member read' first, or give its id",
                code="unknown_post",
            )
        return b64d(known)
    with translated(from_relay=False):
        return b64d(ref, length=32, what="the id to reply to")


def check_rules(state: MemberState, body: bytes, reply_to: bytes) -> None:
    """The verified profile's rules, before anything is signed."""
    verified = state.verified_profile()
    if verified is None:
        return  # the relays judge; a joined member normally has the profile
    profile = verified.profile
    if profile.kind != "group" and not profile.comments:
        raise RelayError(
            "the owners' profile takes no member messages here (a channel without comments)",
            code=ErrorCode.MEMBER_POSTS_OFF.value,
        )
    if profile.max_message_bytes and len(body) > profile.max_message_bytes:
        raise RelayError(
            f"the message is {len(body)} bytes; the owners' limit is {profile.max_message_bytes}",
            code=ErrorCode.MESSAGE_TOO_LARGE.value,
        )
    if profile.kind != "group" and not reply_to:
        raise RelayError(
            "in a channel, a member comments on an owner post: give --reply-to #SEQ (or its id)",
            code=ErrorCode.BAD_REPLY.value,
        )


async def post_message(
    state: MemberState,
    path: Path,
    body: bytes,
    *,
    content_type: str = CONTENT_TEXT,
    reply_to: bytes = b"",
    timeout: float = 15.0,
) -> MessageOutcome:
    """Sign one message after the member's last and store it on every relay of the group."""
    if len(body) > MAX_MESSAGE:
        raise RelayError(
            f"the message is {len(body)} bytes; no group takes more than {MAX_MESSAGE}",
            code=ErrorCode.MESSAGE_TOO_LARGE.value,
        )
    check_rules(state, body, reply_to)
    addresses = member_relays(state)
    before = (state.author_seq, state.author_id, state.author_created_at, list(state.messages))
    head = head_of(state)
    signed = make_message(
        state.member_key,
        channel=state.parsed_link.channel,
        after=head,
        body=body,
        now=max(int(time.time()), head.created_at),
        content_type=content_type,
        reply_to=reply_to,
    )
    mine = stored_message(signed)
    mid = mine.id
    state.author_seq, state.author_id = mine.seq, b64e(mid)
    state.author_created_at = mine.message.created_at
    state.messages.append(b64e(encode(signed)))
    del state.messages[:-HISTORY_KEEP]
    state.save(path)  # kept before any relay sees it: a relay that misses it is repaired later
    cert = _cert(state)
    results = [RelayMessage(relay=a) for a in addresses]
    async with trio.open_nursery() as nursery:
        for result in results:
            nursery.start_soon(_relay_post, state, result, signed, cert, timeout)
    outcome = MessageOutcome(seq=state.author_seq, id=b64e(mid), relays=results)
    if all(r.refused or not r.sent for r in results):
        # no relay stored it: the next message takes its place in the chain
        state.author_seq, state.author_id, state.author_created_at, state.messages = before
        state.save(path)
        outcome.sent = any(r.sent for r in results)
    return outcome


def _cert(state: MemberState) -> Signed | None:
    if not state.cert:
        return None
    return decode(b64d(state.cert), Signed, limit=64 * 1024, what="cert")


async def _relay_post(
    state: MemberState, result: RelayMessage, signed: Signed, cert: Signed | None, timeout: float
) -> None:
    try:
        async with open_session(parse_address(result.relay), timeout=timeout) as session:
            result.sent = True
            try:
                try:
                    answer = await _send(session, signed, cert)
                except RelayRefused as exc:
                    if exc.code != ErrorCode.EVENT_GAP.value:
                        raise
                    result.repaired = await _repair(session, state, signed, cert)
                    answer = await _send(session, signed, cert)
            except RelayRefused:
                result.refused = True
                raise
        result.status, result.pos = answer.status, answer.pos
    except RelayError as exc:
        result.code, result.reason = exc.code, exc.reason


async def _send(session: RelaySession, signed: Signed, cert: Signed | None) -> MemberPostResult:
    answer = await session.request(MemberPost(message=signed, cert=cert))
    if not isinstance(answer, MemberPostResult):
        raise RelayProtocolError(f"expected member_post_result, got {type(answer).__name__}")
    return answer


async def _repair(session: RelaySession, state: MemberState, signed: Signed, cert: Signed | None) -> int:
    """Send the relay this member's earlier messages it lacks, oldest first.

    The relay says only that it lacks some; each one it already holds answers ``duplicate``,
    so every kept message before the new one is sent (at most HISTORY_KEEP); a relay further
    behind than the file keeps answers ``event_gap`` again, and is reported.
    """
    new_seq = decode(signed.body, MemberMessage, limit=MAX_MESSAGE + MESSAGE_OVERHEAD).seq
    earlier = [s for s, m in (_own(raw) for raw in state.messages) if m.seq < new_seq]
    if not earlier:
        raise RelayError("the relay lacks messages this member file no longer keeps", code="event_gap")
    sent = 0
    for old in earlier:
        answer = await _send(session, old, cert)
        sent += answer.status == "stored"
    return sent
