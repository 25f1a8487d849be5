"""The member's side: join a channel through its link, and learn the decision.

The member trusts no relay.  The profile each relay serves is verified against
the channel id in the link and the owner chain; a relay serving an altered
profile is reported and skipped.  Each relay gets its own signed join request,
bound to that relay, group address and connection, so no one can replay it at
another relay or on another connection.  The member key is made once per state
file (one per channel).  The file (mode 0600) is written once a relay has
answered the request, so that it keeps the key of every request a relay holds; a
join that no relay answered (a mistyped link, an unreachable relay) leaves no
file, or the file as it was, so the retry with the corrected link is not refused.
A retry with the same file asks with the same key (a new request, signed for the
new connection) and gets the first decision again.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from relay.client.connection import RelaySession, open_session
from relay.client.errors import RelayError, RelayProtocolError, translated
from relay.client.progress import waiting
from relay.client.statefile import convert, load_state, save_private
from relay.protocol import crypto
from relay.protocol.addresses import ChannelLink, RelayAddress, parse_address, parse_link
from relay.protocol.encoding import b64d, b64e, decode, encode
from relay.protocol.errors import ProtocolError
from relay.protocol.membership import make_join_request, make_member_request
from relay.protocol.messages import (
    Join,
    JoinResult,
    JoinStatus,
    MemberProfile,
    ProfileAnswer,
    ProfileRequest,
    Signed,
)
from relay.protocol.profile import MAX_SIGNED_BODY, VerifiedProfile, check_succession, verify_profile


@dataclass
class MemberRelay:
    """One relay of the channel, as this member sees it."""

    address: str  # the group address from the link
    status: str = "new"  # new | held | pending_approval | admitted | refused | unusable
    code: str | None = None
    reason: str | None = None


@dataclass
class MemberState:
    """A member's keys and view of one channel (the secret key included)."""

    link: str
    member_secret: str = field(repr=False)
    name: str
    about: str = ""
    profile_version: int = 0
    relays: list[MemberRelay] = field(default_factory=list)
    # X25519 secret (b64) for sealed direct invitations; its public key is in the join request.
    seal_secret: str = field(default="", repr=False)
    profile: str = ""  # the newest verified profile: encoded signed bytes, b64
    last_seq: int = 0  # the last event shown to this member, and its id (b64): the next read's anchor
    last_id: str = ""
    invitations: list[dict[str, object]] = field(default_factory=list)  # received, newest last, bounded
    # Member messages (relay.client.memberpost): this member's cert (encoded signed bytes, b64,
    # learnt from a timeline), the head of its own chain of messages (seq, id b64, created_at),
    # and its newest messages (encoded signed bytes, b64, oldest first, bounded), what a relay
    # that missed some is sent again.
    cert: str = ""
    author_seq: int = 0
    author_id: str = ""
    author_created_at: int = 0
    messages: list[str] = field(default_factory=list)
    # What reads showed: owner posts' ids by sequence number (so ``--reply-to #SEQ`` works) and
    # the ids of member messages shown (so the next read shows only new ones); both bounded.
    post_ids: dict[str, str] = field(default_factory=dict)
    shown_messages: list[str] = field(default_factory=list)

    @cached_property
    def member_key(self) -> ed25519.Ed25519PrivateKey:
        return ed25519.Ed25519PrivateKey.from_private_bytes(b64d(self.member_secret))

    @property
    def member_id(self) -> str:
        """What owners see in their pending list: the public member key, base64url."""
        return b64e(crypto.public_bytes(self.member_key))

    @cached_property
    def seal_key(self) -> x25519.X25519PrivateKey:
        return x25519.X25519PrivateKey.from_private_bytes(b64d(self.seal_secret))

    def seal_public(self) -> bytes:
        return self.seal_key.public_key().public_bytes_raw()

    def verified_profile(self) -> VerifiedProfile | None:
        """The newest profile this member verified (checked again: the file is only ours)."""
        if not self.profile:
            return None
        return verify_profile(decode(b64d(self.profile), Signed, limit=4 * MAX_SIGNED_BODY, what="profile"))

    def keep_profile(self, verified: VerifiedProfile) -> None:
        if verified.profile.version >= self.profile_version or not self.profile:
            self.profile = b64e(encode(verified.signed))
            self.profile_version = verified.profile.version

    @cached_property
    def parsed_link(self) -> ChannelLink:
        return parse_link(self.link)

    @classmethod
    def new(cls, link: str, *, name: str, about: str = "") -> MemberState:
        with translated(from_relay=False):
            parsed = parse_link(link)  # refuse a bad link before a key is made for it
        if not parsed.relays:
            raise RelayError(
                "the link lists no relay, so there is nothing to join; ask the owners for the link "
                "'relay owner link' prints once a relay serves the channel",
                code="no_relay",
            )
        key = ed25519.Ed25519PrivateKey.generate()
        return cls(
            link=link,
            member_secret=b64e(key.private_bytes_raw()),
            seal_secret=b64e(x25519.X25519PrivateKey.generate().private_bytes_raw()),
            name=name,
            about=about,
            relays=[MemberRelay(address=a) for a in parsed.relays],
        )

    @classmethod
    def load(cls, path: Path) -> MemberState:
        raw = load_state(path, "member", "relay member join")
        if "owner_secret" in raw or "root_secret" in raw or "certs" in raw:
            raise RelayError(
                f"{path} is an owner's file ('relay owner ...'), not a member's; give the member file "
                "'relay member join' made",
                code="wrong_file",
            )
        state = convert(raw, cls, path, "member")
        try:  # the keys, the link and the profile the commands will use, checked once here
            crypto.public_bytes(state.member_key)
            if state.seal_secret:
                state.seal_public()
            state.parsed_link  # noqa: B018
            for entry in state.relays:
                parse_address(entry.address)
            state.verified_profile()
        except (ProtocolError, ValueError, TypeError) as exc:
            reason = exc.reason if isinstance(exc, ProtocolError) else str(exc) or type(exc).__name__
            raise RelayError(f"{path} is not a valid member state file ({reason})", code="bad_file") from None
        return state

    def save(self, path: Path) -> None:
        save_private(path, asdict(self))

    def answered(self) -> bool:
        """Whether a relay holds a request of this member (it answered one): only then does
        the file record something real."""
        return any(r.status not in ("new", "unusable") for r in self.relays)


async def _fetch_profile(session: RelaySession, channel: bytes) -> VerifiedProfile:
    answer = await session.request(ProfileRequest())
    if not isinstance(answer, ProfileAnswer):
        raise RelayProtocolError(f"expected profile, got {type(answer).__name__}")
    try:
        verified = verify_profile(answer.profile)
    except ProtocolError as exc:
        raise RelayProtocolError(
            f"the relay served a profile that does not verify ({exc.reason})", code=exc.code.value
        ) from None
    if verified.profile.channel != channel:
        raise RelayProtocolError("the relay served the profile of another channel", code="channel_mismatch")
    return verified


async def join(state: MemberState, path: Path, *, wait: float = 0.0, timeout: float = 15.0) -> MemberState:
    """Ask every relay of the link to admit this member, all at once; records each answer in
    ``state``, and writes the state file if any relay answered (also when cancelled: a request
    a relay holds keeps its key).

    With ``wait`` > 0 the connection stays open after a ``held`` or ``pending_approval``
    answer, for up to ``wait`` seconds, to learn the decision.
    """
    if not state.seal_secret:  # a file from before direct invitations: make the key now
        state.seal_secret = b64e(x25519.X25519PrivateKey.generate().private_bytes_raw())
    channel = state.parsed_link.channel
    profile = MemberProfile(name=state.name, about=state.about, seal_key=state.seal_public())
    profiles: list[VerifiedProfile] = []

    async def ask(entry: MemberRelay) -> None:
        try:
            address = parse_address(entry.address)
            assert address.address_id is not None  # parse_link admits group addresses only
            async with open_session(address, timeout=timeout) as session:
                verified = await _fetch_profile(session, channel)
                _check_succession(state.verified_profile(), verified)
                profiles.append(verified)
                request = make_join_request(
                    state.member_key,
                    relay_fingerprint=address.fingerprint,
                    channel=channel,
                    address_id=address.address_id,
                    profile=profile,
                    session=session.challenge,
                    now=int(time.time()),
                )
                answer = _result(await session.request(Join(request=request)))
                _record(entry, answer)
                if wait > 0 and answer.status in ("held", "pending_approval"):
                    _record(entry, await _status(session, state, address, wait, timeout))
        except RelayError as exc:
            if entry.status in ("new", "unusable"):
                entry.status, entry.code, entry.reason = "unusable", exc.code, exc.reason
            else:  # the request is held; only the wait for its decision failed
                entry.code, entry.reason = exc.code, exc.reason

    try:
        async with trio.open_nursery() as nursery:
            for entry in state.relays:
                nursery.start_soon(ask, entry)
        if profiles:
            newest = max(profiles, key=lambda p: p.profile.version)
            state.keep_profile(newest)
            _mark_unlisted(state, newest)
    finally:
        if state.answered():
            state.save(path)
    return state


def _check_succession(stored: VerifiedProfile | None, served: VerifiedProfile) -> None:
    """A newer profile than ours must be signed by an owner we know, or one added since."""
    if stored is None or served.profile.version <= stored.profile.version:
        return
    try:
        check_succession(stored, served)
    except ProtocolError as exc:
        raise RelayProtocolError(
            f"the relay served a profile that does not follow ours ({exc.reason})", code=exc.code.value
        ) from None


def _mark_unlisted(state: MemberState, newest: VerifiedProfile) -> None:
    """A relay the newest profile no longer lists is not the channel's any more.

    Before activation the newest profile may list no relay at all; then the link is all we have.
    """
    listed = set(newest.profile.relays)
    if not listed:
        return
    for entry in state.relays:
        if entry.address not in listed:
            entry.status, entry.code = "unusable", "not_listed"
            entry.reason = f"profile version {newest.profile.version} does not list this relay"


async def status(state: MemberState, path: Path, *, wait: float = 0.0, timeout: float = 15.0) -> MemberState:
    """Ask each relay for the decision on this member's request (waiting up to ``wait`` s),
    all at once; the state file is written if any relay answered, and if none did the
    RelayError says why for each."""
    answered: list[bool] = []

    async def ask(entry: MemberRelay) -> None:
        try:
            address = parse_address(entry.address)
            async with open_session(address, timeout=timeout) as session:
                answer = await _status(session, state, address, wait, timeout)
            _record(entry, answer)
            answered.append(True)
        except RelayError as exc:
            entry.code, entry.reason = exc.code, exc.reason

    asked = [entry for entry in state.relays if entry.status != "new"]
    try:
        async with trio.open_nursery() as nursery:
            for entry in asked:
                nursery.start_soon(ask, entry)
    finally:
        if answered:
            state.save(path)
    if asked and not answered:
        bases = [e.address.split("/g/")[0] for e in asked]
        reasons = "; ".join(
            str(e.reason) if base in str(e.reason) else f"{base}: {e.reason}"
            for e, base in zip(asked, bases, strict=True)
        )
        raise RelayError(f"no relay answered: {reasons}", code=asked[0].code)
    return state


async def _status(
    session: RelaySession, state: MemberState, address: RelayAddress, wait: float, timeout: float
) -> JoinResult:
    """The decision on this member's request, waited for up to ``wait`` s (the answer may
    take that long, and ``timeout`` more)."""
    assert address.address_id is not None
    request = make_member_request(
        state.member_key,
        relay_fingerprint=address.fingerprint,
        channel=state.parsed_link.channel,
        address_id=address.address_id,
        session=session.challenge,
        now=int(time.time()),
    )
    with waiting(f"the decision of {session.where}") if wait > 0 else nullcontext():
        answer = await session.request(JoinStatus(request=request, wait=wait), timeout=wait + timeout)
    return _result(answer)


def _result(answer: object) -> JoinResult:
    if not isinstance(answer, JoinResult):
        raise RelayProtocolError(f"expected join_result, got {type(answer).__name__}")
    return answer


def _record(entry: MemberRelay, answer: JoinResult) -> None:
    entry.status, entry.code, entry.reason = answer.status, answer.code, answer.reason
