"""Owners and moderators act on a group: member certs, removals, bans, the moderator role.

Everything here is a signed entry (a :class:`~relay.protocol.messages.MemberCert` signed by an
owner, or a :class:`~relay.protocol.messages.Moderation` signed by an owner or a moderator)
handed to EVERY relay of the group (``publish`` on its group address, all relays at once), so
that no relay can hold one back unnoticed: readers compare the relays' timelines.  A cert or
moderation is signed once and the same bytes go to every relay; sending it again is harmless
(``duplicate``).

``certify`` asks every relay for its admitted members without a current cert (the owner
command ``list_uncertified`` on the contact address), signs one cert per member and publishes
it; ``keep`` repeats that until cancelled.  The name certified is the one in the member's own
signed join request, which each relay hands over with its listing and this module checks
(signer, channel, signature): a relay that lists a member without it, or with one that does
not verify, is reported and its listing does not count.  A new cert or moderation about a member is
made strictly newer than the last one this owner file signed about that member (``issued_at``
one second later if the clock has not moved on), since a cert no newer than the member's
current one is ``superseded`` and a cert issued at or before a removal does not count.

This module signs and sends; it must not judge what relays serve (relay.client.reader does).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from relay.client.connection import open_session
from relay.client.errors import RelayError, RelayProtocolError, RelayRefused, translated
from relay.client.member import MemberState
from relay.client.owner import OwnerState, RelayEntry, command_relay, serving_relays, signed_to_json
from relay.protocol.addresses import parse_address
from relay.protocol.encoding import b64d, b64e
from relay.protocol.errors import ErrorCode, ProtocolError, RemoteProtocolError
from relay.protocol.invitation import ACTION_LIST_UNCERTIFIED
from relay.protocol.membership import verify_member_card
from relay.protocol.messages import (
    PendingMember,
    Publish,
    PublishResult,
    Signed,
)
from relay.protocol.timeline import (
    ACTION_REMOVE_MESSAGE,
    MODERATION_ACTIONS,
    make_cert,
    make_moderation,
    stored_cert,
    stored_moderation,
)

KEEP_INTERVAL = 5.0  # seconds between two rounds of ``certify --keep``


@dataclass
class RelayPublish:
    """What one relay answered to one published entry."""

    relay: str  # the group address
    status: str = "error"  # "stored" | "duplicate" | "error"
    pos: int = 0
    code: str | None = None
    reason: str | None = None


@dataclass
class Published:
    """One signed entry and every relay's answer."""

    kind: str  # "cert" | "moderation"
    id: str  # b64
    relays: list[RelayPublish] = field(default_factory=list)
    member: str = ""  # b64: the member a cert (or a moderation about a member) is about
    name: str = ""
    role: str = ""
    action: str = ""

    @property
    def stored(self) -> bool:
        return any(r.status in ("stored", "duplicate") for r in self.relays)


def _key(text: str, what: str = "member key") -> bytes:
    with translated(from_relay=False):
        return b64d(text, length=32, what=what)


def _message_ref(text: str) -> bytes:
    with translated(from_relay=False):
        return b64d(text, length=32, what="message id")


async def publish_entries(
    addresses: list[str], entries: list[tuple[Signed, str]], *, timeout: float
) -> list[list[RelayPublish]]:
    """Hand each ``(entry, kind)`` to every group address, all relays at once, in order on each
    relay's one connection; the answers as ``[entry][relay]``."""
    answers = [[RelayPublish(relay=a) for a in addresses] for _ in entries]

    async def one(i: int, address: str) -> None:
        try:
            async with open_session(parse_address(address), timeout=timeout) as session:
                for n, (signed, kind) in enumerate(entries):
                    result = answers[n][i]
                    try:
                        answer = await session.request(Publish(entry=signed, kind=kind))
                        if not isinstance(answer, PublishResult):
                            raise RelayProtocolError(f"expected publish_result, got {type(answer).__name__}")
                        result.status, result.pos = answer.status, answer.pos
                    except RelayRefused as exc:  # this entry only: the connection goes on
                        result.code, result.reason = exc.code, exc.reason
        except RelayError as exc:
            for row in answers:
                if row[i].status == "error" and row[i].code is None:
                    row[i].code, row[i].reason = exc.code, exc.reason

    async with trio.open_nursery() as nursery:
        for i, address in enumerate(addresses):
            nursery.start_soon(one, i, address)
    return answers


def _check_posts_on(state: OwnerState) -> None:
    if state.kind != "group" and not state.comments:
        raise RelayError(
            "this channel takes no member messages: create a group (--kind group) or a channel with "
            "--comments",
            code="member_posts_off",
        )


def _next_issued(state: OwnerState, member: str) -> int:
    """A time strictly after anything this file signed about ``member``."""
    last = state.member_certs.get(member, {}).get("issued_at", 0)
    return max(int(time.time()), int(last) + 1 if isinstance(last, int) else 0)


def _sign_cert(state: OwnerState, member: str, name: str, role: str) -> Signed:
    issued = _next_issued(state, member)
    signed = make_cert(
        state.owner_key, channel=state.channel, member=_key(member), name=name, role=role, now=issued
    )
    state.member_certs[member] = {
        "name": name,
        "role": role,
        "issued_at": issued,
        "cert": signed_to_json(signed),
        "removed": False,
    }
    return signed


@dataclass
class Uncertified:
    member: str  # b64
    name: str
    about: str
    relays: list[str]  # the relays that list it


def signed_listing(pending: PendingMember, channel: bytes) -> Uncertified:
    """A relay's listing of a member without a cert, as the member itself signed it: the name
    and about line come from its own join request (checked here), never from the relay's
    ``name``, so a relay cannot have the owners certify a member under a name of its choosing.
    Raises ``bad_signature`` (no request, or another signer's, or one that does not verify) or
    ``channel_mismatch``."""
    if pending.join is None:
        raise RemoteProtocolError(
            ErrorCode.BAD_SIGNATURE, "the relay listed a member without its signed join request"
        )
    card = verify_member_card(pending.join, member=pending.member, channel=channel)
    return Uncertified(b64e(pending.member), card.profile.name, card.profile.about[:500], [])


async def list_uncertified(
    state: OwnerState, *, timeout: float = 15.0
) -> tuple[list[Uncertified], list[dict[str, object]]]:
    """Every relay's admitted members without a current cert (merged by key), and the relays
    that could not be asked."""
    targets = serving_relays(state)
    found: dict[str, Uncertified] = {}
    troubles: list[dict[str, object]] = []

    async def ask(entry: RelayEntry) -> None:
        try:
            answer = await command_relay(state, entry, ACTION_LIST_UNCERTIFIED, timeout=timeout)
            for p in answer.pending:
                try:
                    listed = signed_listing(p, state.channel)
                except ProtocolError as exc:
                    troubles.append({"relay": entry.contact, "code": exc.code.value, "reason": exc.reason})
                    continue
                seen = found.setdefault(listed.member, listed)
                seen.relays.append(entry.contact)
        except RelayError as exc:
            troubles.append({"relay": entry.contact, "code": exc.code, "reason": exc.reason})

    async with trio.open_nursery() as nursery:
        for entry in targets:
            nursery.start_soon(ask, entry)
    return sorted(found.values(), key=lambda u: u.member), troubles


@dataclass
class CertifyRound:
    certified: list[Published] = field(default_factory=list)
    relays: list[dict[str, object]] = field(default_factory=list)  # relays that could not be asked
    skipped: list[str] = field(default_factory=list)  # named members no relay lists
    # Members some of the relays asked do not list (``--all`` leaves them to ``--member``).
    partial: list[Uncertified] = field(default_factory=list)


async def certify(
    state: OwnerState,
    path: Path,
    *,
    members: list[str] | None = None,
    role: str = "member",
    timeout: float = 15.0,
) -> CertifyRound:
    """One round: sign a cert for each uncertified member (``members``: only these keys) and
    publish it to every relay.  The certs are in the state file before any relay sees them.

    Without ``members``, only the members every relay that answered lists are certified: a
    member joins every relay of the link, and a key only one relay lists may be that relay's
    own invention (the list is the relay's word, not the member's).  The others are returned
    in ``partial``, for the owners to check and certify by name.
    """
    _check_posts_on(state)
    wanted = None if members is None else [b64e(_key(m)) for m in members]
    pending, troubles = await list_uncertified(state, timeout=timeout)
    answered = len(serving_relays(state)) - len(troubles)
    chosen = [u for u in pending if u.member in wanted] if wanted is not None else []
    out = CertifyRound(relays=troubles)
    if wanted is None:
        chosen = [u for u in pending if len(u.relays) >= answered]
        out.partial = [u for u in pending if len(u.relays) < answered]
    if wanted is not None:
        out.skipped = [m for m in wanted if m not in {u.member for u in chosen}]
    if not chosen:
        return out
    signed = [(u, _sign_cert(state, u.member, u.name, role)) for u in chosen]
    state.save(path)
    answers = await publish_entries(
        [str(r.group_address) for r in serving_relays(state)],
        [(s, "cert") for _, s in signed],
        timeout=timeout,
    )
    for (u, s), relays in zip(signed, answers, strict=True):
        out.certified.append(
            Published("cert", b64e(stored_cert(s).id), relays, member=u.member, name=u.name, role=role)
        )
    return out


async def keep_certifying(
    state: OwnerState,
    path: Path,
    report: Callable[[CertifyRound], Awaitable[None]],
    *,
    interval: float = KEEP_INTERVAL,
    timeout: float = 15.0,
) -> None:
    """``certify`` every ``interval`` seconds until cancelled, each round handed to ``report``."""
    while True:
        await report(await certify(state, path, timeout=timeout))
        await trio.sleep(interval)


async def set_role(
    state: OwnerState, path: Path, member: str, role: str, *, name: str | None = None, timeout: float = 15.0
) -> Published:
    """A new cert for a member this file certified, with ``role`` (grant or withdraw moderator)."""
    _check_posts_on(state)
    key = b64e(_key(member))
    known = state.member_certs.get(key)
    if name is None:
        if known is None:
            raise RelayError(
                f"this owner file has not certified member {key}; certify it first, or give --name",
                code="unknown_member",
            )
        name = str(known["name"])
    signed = _sign_cert(state, key, name, role)
    state.save(path)
    [relays] = await publish_entries(
        [str(r.group_address) for r in serving_relays(state)], [(signed, "cert")], timeout=timeout
    )
    return Published("cert", b64e(stored_cert(signed).id), relays, member=key, name=name, role=role)


def _subject(action: str, subject: str) -> bytes:
    if action not in MODERATION_ACTIONS:
        raise RelayError(f"unknown moderation {action!r}", code="usage")
    return _message_ref(subject) if action == ACTION_REMOVE_MESSAGE else _key(subject)


async def moderate(
    state: OwnerState, path: Path, action: str, subject: str, *, reason: str = "", timeout: float = 15.0
) -> Published:
    """An owner's signed moderation (``remove_message`` ID, ``remove_member``/``ban`` KEY),
    published to every relay."""
    _check_posts_on(state)
    raw = _subject(action, subject)
    member = b64e(raw) if action != ACTION_REMOVE_MESSAGE else ""
    now = _next_issued(state, member) if member else int(time.time())
    signed = make_moderation(
        state.owner_key, channel=state.channel, action=action, subject=raw, reason=reason, now=now
    )
    if member:  # a later cert must be newer than this removal to count
        record = state.member_certs.setdefault(member, {"name": "", "role": "member"})
        record.update(issued_at=now, removed=True)
        state.save(path)
    [relays] = await publish_entries(
        [str(r.group_address) for r in serving_relays(state)], [(signed, "moderation")], timeout=timeout
    )
    return Published("moderation", b64e(stored_moderation(signed).id), relays, member=member, action=action)


async def member_moderate(
    state: MemberState, action: str, subject: str, *, reason: str = "", timeout: float = 15.0
) -> Published:
    """A moderator's signed moderation (with its member key), published to every relay of the
    group.  A moderator may not act on an owner or another moderator: relays and readers refuse
    it (``not_a_moderator``)."""
    raw = _subject(action, subject)
    signed = make_moderation(
        state.member_key,
        channel=state.parsed_link.channel,
        action=action,
        subject=raw,
        reason=reason,
        now=int(time.time()),
    )
    [relays] = await publish_entries(member_relays(state), [(signed, "moderation")], timeout=timeout)
    member = b64e(raw) if action != ACTION_REMOVE_MESSAGE else ""
    return Published("moderation", b64e(stored_moderation(signed).id), relays, member=member, action=action)


def member_relays(state: MemberState) -> list[str]:
    """The group addresses a member talks to: the newest verified profile's, else the link's."""
    profile = state.verified_profile()
    if profile is not None and profile.profile.relays:
        return list(profile.profile.relays)
    return list(state.parsed_link.relays)
