"""The channel owner's side: create a channel, add relays, publish the profile, read the log.

The owner key lives in a local state file (mode 0600) that is never sent
anywhere; the channel's root key does not (``relay owner create`` writes it to a
file of its own that the owner can keep offline, see :mod:`relay.client.rootkey`).
Every channel gets its own root key, owner key and per-relay service group id,
and every relay is contacted on a fresh connection, so nothing the relays see
links two channels of one person.  The service group id is saved
*before* the invitation is sent, so a retry after a crash on either side asks
for the same group and gets the same address.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric import ed25519

from relay.client.connection import RelaySession, open_session
from relay.client.errors import RelayError, RelayProtocolError, translated
from relay.client.statefile import convert, create_private, load_state, save_private
from relay.protocol import crypto
from relay.protocol.addresses import ChannelLink, RelayAddress, parse_address
from relay.protocol.encoding import b64d, b64e, decode, encode
from relay.protocol.errors import ProtocolError
from relay.protocol.events import MAX_EVENT_BODY
from relay.protocol.invitation import (
    ACTION_READ_LOG,
    SEAL_PURPOSE,
    make_invitation,
    make_owner_request,
    verify_grant,
)
from relay.protocol.messages import (
    Invite,
    InviteResult,
    LogRequest,
    LogResult,
    OwnerCert,
    OwnerCommand,
    OwnerCommandResult,
    Profile,
    ProfileResult,
    ProfileUpdate,
    Signed,
)
from relay.protocol.profile import verify_owner_chain
from relay.protocol.state import OWNERS_CLOSED


@dataclass
class RelayEntry:
    contact: str
    service_group: str  # b64
    group_address: str | None = None
    status: str = "new"
    listed: bool = True  # False once the owners removed the relay: kept to read its log


@dataclass
class OwnerState:
    """Everything an owner keeps about one channel: the owner key, not the root key.

    ``root_secret`` is empty in files written by ``relay owner create`` since the root key
    moved to a file of its own; files written before that (and states fresh from
    :func:`create_channel`, until :func:`relay.client.rootkey.save_new_channel` splits them)
    still hold it.
    """

    kind: str
    name: str
    description: str
    owner_secret: str = field(repr=False)
    owner_cert: dict[str, str]
    profile_version: int = 1
    direct_messages: bool = False
    admission: str = "auto"  # "auto" | "approval": signed into the profile
    max_members: int = 0  # 0: no limit of the owners' own
    relays: list[RelayEntry] = field(default_factory=list)
    # Every owner cert of the channel in chain order (each signer authorised before it is
    # used); empty in files written before co-owners existed: then just ``owner_cert``.
    certs: list[dict[str, str]] = field(default_factory=list)
    # The root public key (b64), for co-owners, whose files hold no root secret.
    root_public: str = ""
    # The newest events (encoded signed bytes, b64), oldest first, at most HISTORY_KEEP:
    # what a relay that missed posts is sent again (see relay.client.posting).
    history: list[str] = field(default_factory=list)
    # Owner keys (b64) removed since: their events stay history this owner may chain onto.
    former_owners: list[str] = field(default_factory=list)
    # The root secret (b64) only in files written before it moved out; repr=False keeps it
    # out of tracebacks and test reports.
    root_secret: str = field(default="", repr=False)
    # Member messages (issue 16), signed into the profile: comments on a channel's posts, and
    # the owners' limits (0: the relay's own).
    comments: bool = False
    max_message_bytes: int = 0
    messages_per_minute: int = 0
    slow_mode: int = 0
    # The member certs and moderations this owner signed (relay.client.groups): what
    # ``certify --keep`` skips, the name a role change keeps, and the last ``issued_at`` used,
    # so that each new cert or moderation is strictly newer than the ones before it.
    member_certs: dict[str, dict[str, object]] = field(default_factory=dict)
    last_issued_at: int = 0

    # --- keys and ids (the secrets never change, so each is derived once) ---
    @cached_property
    def root_key(self) -> ed25519.Ed25519PrivateKey:
        return ed25519.Ed25519PrivateKey.from_private_bytes(b64d(self.root_secret))

    @cached_property
    def owner_key(self) -> ed25519.Ed25519PrivateKey:
        return ed25519.Ed25519PrivateKey.from_private_bytes(b64d(self.owner_secret))

    @property
    def has_root(self) -> bool:
        """Whether this file itself holds the root secret (only files of the old layout do)."""
        return bool(self.root_secret)

    @cached_property
    def root_public_key(self) -> bytes:
        return b64d(self.root_public) if self.root_public else crypto.public_bytes(self.root_key)

    @cached_property
    def channel(self) -> bytes:
        return crypto.channel_id(self.root_public_key)

    def cert(self) -> Signed:
        return signed_from_json(self.owner_cert)

    def owner_certs(self) -> list[Signed]:
        """The profile's owner certs, in chain order."""
        return [signed_from_json(c) for c in self.certs] if self.certs else [self.cert()]

    def relay(self, contact: str) -> RelayEntry | None:
        """The entry for this relay, matched by its pinned fingerprint: a relay that moved
        to another host or port but holds the same key is the same relay."""
        fingerprint = parse_address(contact).fingerprint
        for entry in self.relays:
            if parse_address(entry.contact).fingerprint == fingerprint:
                return entry
        return None

    def profile(self) -> Signed:
        """The current profile, signed by the owner key; relays = the group addresses we hold."""
        body = encode(
            Profile(
                channel=self.channel,
                root_key=self.root_public_key,
                version=self.profile_version,
                kind=self.kind,
                name=self.name,
                description=self.description,
                owners=self.owner_certs(),
                relays=list(self.listed_addresses()),
                updated_at=int(time.time()),
                direct_messages=self.direct_messages,
                admission=self.admission,
                max_members=self.max_members,
                comments=self.comments,
                max_message_bytes=self.max_message_bytes,
                messages_per_minute=self.messages_per_minute,
                slow_mode=self.slow_mode,
            )
        )
        return crypto.signed(self.owner_key, crypto.Label.PROFILE, body)

    def listed_addresses(self) -> tuple[str, ...]:
        """The group addresses the profile lists: granted, and not removed by the owners."""
        return tuple(r.group_address for r in self.relays if r.group_address and r.listed)

    def link(self) -> ChannelLink:
        return ChannelLink(self.kind, self.channel, self.listed_addresses())

    # --- the file ---
    @classmethod
    def load(cls, path: Path) -> OwnerState:
        raw = load_state(path, "owner", "relay owner create")
        kind = raw.get("kind")
        if kind == "owner-key":
            raise RelayError(
                f"{path} holds only a new owner key; run 'relay owner adopt' with the share file",
                code="wrong_file",
            )
        if kind == "owner-root":
            raise RelayError(
                f"{path} holds a channel's root key, not an owner state; give the owner file",
                code="wrong_file",
            )
        if "member_secret" in raw:
            raise RelayError(
                f"{path} is a member's state file ('relay member ...'), not an owner's; give the owner file",
                code="wrong_file",
            )
        if "owner_secret" not in raw and "certs" in raw:
            raise RelayError(
                f"{path} is a share file, not an owner state; a new owner takes it with "
                "'relay owner adopt --state KEY_FILE SHARE'",
                code="wrong_file",
            )
        if not (raw.get("root_public") or raw.get("root_secret")):
            raise RelayError(f"{path} is not an owner state file: it names no root key", code="bad_file")
        state = convert(raw, cls, path, "owner")
        try:  # every key, cert, address and event the commands will use, checked once here
            verify_owner_chain(state.channel, state.root_public_key, state.owner_certs())
            crypto.public_bytes(state.owner_key)
            local_events(state)
            for entry in state.relays:
                parse_address(entry.contact)
                if entry.group_address is not None:
                    parse_address(entry.group_address)
        except (ProtocolError, ValueError, TypeError, KeyError) as exc:
            reason = exc.reason if isinstance(exc, ProtocolError) else str(exc) or type(exc).__name__
            raise RelayError(f"{path} is not a valid owner state file ({reason})", code="bad_file") from None
        return state

    def save(self, path: Path) -> None:
        """Write atomically, mode 0600 (or the mode the file had): it holds the owner key."""
        save_private(path, asdict(self))

    def create(self, path: Path) -> None:
        """Write a new state file, as :meth:`save` does but never over an existing file."""
        try:
            create_private(path, asdict(self))
        except FileExistsError:
            raise RelayError(
                f"{path} already exists; it may hold another channel's secrets", code="exists"
            ) from None


def local_events(state: OwnerState) -> list[Signed]:
    """The signed events of the owner's local history (see relay.client.posting)."""
    return [decode(b64d(raw), Signed, limit=2 * MAX_EVENT_BODY, what="history") for raw in state.history]


def signed_to_json(signed: Signed) -> dict[str, str]:
    return {"body": b64e(signed.body), "signer": b64e(signed.signer), "sig": b64e(signed.sig)}


def signed_from_json(raw: dict[str, str]) -> Signed:
    return Signed(**{k: b64d(v) for k, v in raw.items()})


def create_channel(
    name: str,
    *,
    kind: str = "channel",
    description: str = "",
    admission: str = "auto",
    max_members: int = 0,
    comments: bool = False,
    max_message_bytes: int = 0,
    messages_per_minute: int = 0,
    slow_mode: int = 0,
) -> OwnerState:
    """A new channel: a fresh root key, a fresh owner key, and the root's cert for it.

    The state holds the root secret in memory; :func:`relay.client.rootkey.save_new_channel`
    writes it to a root key file and the rest to the state file (``state.save`` alone would
    keep it in the state file, the old layout).
    """
    root = ed25519.Ed25519PrivateKey.generate()
    owner = ed25519.Ed25519PrivateKey.generate()
    channel = crypto.channel_id(crypto.public_bytes(root))
    body = encode(
        OwnerCert(channel=channel, owner_key=crypto.public_bytes(owner), issued_at=int(time.time()))
    )
    cert = crypto.signed(root, crypto.Label.OWNER_CERT, body)
    return OwnerState(
        kind=kind,
        name=name,
        description=description,
        root_secret=b64e(root.private_bytes_raw()),
        owner_secret=b64e(owner.private_bytes_raw()),
        owner_cert=signed_to_json(cert),
        admission=admission,
        max_members=max_members,
        root_public=b64e(crypto.public_bytes(root)),
        comments=comments,
        max_message_bytes=max_message_bytes,
        messages_per_minute=messages_per_minute,
        slow_mode=slow_mode,
    )


@dataclass(frozen=True)
class AddRelayResult:
    status: str  # accepted | pending_approval | refused
    state: str
    group_address: str | None = None
    code: str | None = None
    reason: str | None = None


async def add_relay(state: OwnerState, path: Path, contact: str, *, timeout: float = 15.0) -> AddRelayResult:
    """Send the sealed, signed service-group invitation; idempotent for one state file.

    A relay the owners removed (or let lapse before activation) is invited again through a new
    service group, and grants a new address; any other refusal is the relay's remembered answer.
    The state file is written only once an invitation is about to be sent (a retry after that
    must ask for the same service group), and again with the answer; a relay that cannot be
    reached or does not prove its key leaves it as it was.
    """
    address = parse_address_or_raise(contact)
    if address.address_id is not None:
        raise RelayError(
            "that is a group address; add-relay needs a relay's contact address (/r#...)", code="bad_type"
        )
    entry = state.relay(contact)
    if entry is None or not entry.listed:
        entry = _fresh_entry(state, contact, replacing=entry)
    entry.contact = contact
    result = await _invite(state, path, entry, address, timeout)
    if result.status == "refused" and result.code in OWNERS_CLOSED:
        entry = _fresh_entry(state, contact, replacing=entry)
        result = await _invite(state, path, entry, address, timeout)
    state.save(path)
    return result


def _fresh_entry(state: OwnerState, contact: str, *, replacing: RelayEntry | None = None) -> RelayEntry:
    """A new service group for this relay (saved by :func:`_invite` before it is sent)."""
    if replacing is not None:
        state.relays.remove(replacing)
    entry = RelayEntry(contact=contact, service_group=b64e(secrets.token_bytes(16)))
    state.relays.append(entry)
    return entry


async def _invite(
    state: OwnerState, path: Path, entry: RelayEntry, address: RelayAddress, timeout: float
) -> AddRelayResult:
    """One invitation on a fresh connection; records the answer in ``entry``."""
    async with open_session(address, timeout=timeout) as session:
        suite = crypto.strongest_suite(list(session.card.seal_keys))
        plaintext = make_invitation(
            owner_key=state.owner_key,
            relay_fingerprint=address.fingerprint,
            service_group=b64d(entry.service_group),
            profile=state.profile(),
            channel=state.channel,
            session=session.challenge,
            now=int(time.time()),
        )
        sealed = crypto.seal(
            suite,
            session.card.seal_keys[suite],
            plaintext,
            crypto.seal_info(SEAL_PURPOSE, address.fingerprint),
        )
        state.save(path)  # the service group is on disk before the relay may know it: a retry reuses it
        answer = await session.request(Invite(suite=suite, sealed=sealed))
    if not isinstance(answer, InviteResult):
        raise RelayProtocolError(f"expected invite_result, got {type(answer).__name__}")
    entry.status = answer.status
    if answer.status != "accepted":
        return AddRelayResult(
            status=answer.status, state=answer.state, code=answer.code, reason=answer.reason
        )
    if answer.grant is None:
        raise RelayProtocolError("accepted without a signed address grant")
    try:
        grant = verify_grant(
            answer.grant,
            relay_key=session.card.relay_key,
            channel=state.channel,
            service_group=b64d(entry.service_group),
        )
        granted = parse_address(grant.address)
    except ProtocolError as exc:
        raise RelayProtocolError(f"bad address grant: {exc.reason}", code=exc.code.value) from None
    if granted.fingerprint != address.fingerprint or granted.address_id is None:
        raise RelayProtocolError("the granted address is not an address of this relay")
    if entry.group_address not in (None, grant.address):
        raise RelayProtocolError("the relay granted a different address than before")
    entry.group_address = grant.address
    return AddRelayResult(status="accepted", state=answer.state, group_address=grant.address)


def parse_address_or_raise(text: str) -> RelayAddress:
    with translated(from_relay=False):
        return parse_address(text)


@dataclass(frozen=True)
class PublishResult:
    version: int
    link: str
    relays: list[dict[str, object]]


async def publish(
    state: OwnerState, path: Path, *, timeout: float = 15.0, also_notify: RelayEntry | None = None
) -> PublishResult:
    """Sign a new profile version that lists every granted address, and notify each relay
    (and ``also_notify``, a relay just removed, so that it stops serving the channel), all at once.

    The new version is written to the state file before the first relay may see it (versions
    only grow, even if a notification fails), and not at all if no relay can be reached.
    """
    state.profile_version += 1
    signed = state.profile()
    targets = [
        entry
        for entry in state.relays
        if entry.group_address is not None and (entry.listed or entry is also_notify)
    ]
    outcomes: list[dict[str, object]] = [
        {"relay": entry.contact, "group_address": entry.group_address} for entry in targets
    ]
    saved: list[bool] = []

    async def notify(entry: RelayEntry, outcome: dict[str, object]) -> None:
        try:
            async with open_session(parse_address(str(entry.group_address)), timeout=timeout) as session:
                if not saved:
                    state.save(path)
                    saved.append(True)
                answer = await session.request(ProfileUpdate(profile=signed))
            if not isinstance(answer, ProfileResult):
                raise RelayProtocolError(f"expected profile_result, got {type(answer).__name__}")
            outcome.update(status="ok", state=answer.state, version=answer.version)
            entry.status = answer.state
        except RelayError as exc:
            outcome.update(status="error", code=exc.code, reason=exc.reason)

    async with trio.open_nursery() as nursery:
        for entry, outcome in zip(targets, outcomes, strict=True):
            nursery.start_soon(notify, entry, outcome)
    if saved or not targets:
        state.save(path)
    else:
        state.profile_version -= 1  # no relay saw it: the file is as it was, and so is this state
    return PublishResult(version=state.profile_version, link=str(state.link()), relays=outcomes)


async def remove_relay(
    state: OwnerState, path: Path, contact: str, *, timeout: float = 15.0
) -> PublishResult:
    """Stop using a relay: publish a profile version without it, to the others and to it.

    The entry stays in the state file (unlisted) so that its service-group log can still be
    read; the relay answers ``removed``.  A later :func:`add_relay` to it starts afresh.
    """
    parse_address_or_raise(contact)
    entry = state.relay(contact)
    if entry is None or not entry.listed:
        raise RelayError(f"{contact} is not a relay of this channel", code="unknown_relay")
    entry.listed = False
    return await publish(state, path, timeout=timeout, also_notify=entry)


def serving_relays(state: OwnerState) -> list[RelayEntry]:
    """The relays the profile lists (granted a group address, not removed): where owner posts,
    certs and moderations go; none is a failure (``no_relay``)."""
    targets = [r for r in state.relays if r.listed and r.group_address]
    if not targets:
        raise RelayError("no relay serves this channel yet (add one and publish)", code="no_relay")
    return targets


def _owner_request(
    state: OwnerState,
    entry: RelayEntry,
    session: RelaySession,
    action: str,
    *,
    subject: bytes = b"",
    note: str = "",
) -> Signed:
    """A fresh owner request for ``action`` in this relay's service group, for ``session``
    (open on the relay's contact address): it is good on that connection only."""
    request = make_owner_request(
        state.owner_key,
        relay_fingerprint=parse_address(entry.contact).fingerprint,
        channel=state.channel,
        service_group=b64d(entry.service_group),
        action=action,
        session=session.challenge,
        now=int(time.time()),
        subject=subject,
        note=note,
    )
    return request


async def command_relay(
    state: OwnerState,
    entry: RelayEntry,
    action: str,
    *,
    subject: bytes = b"",
    note: str = "",
    timeout: float = 15.0,
) -> OwnerCommandResult:
    """One owner command (``action``) through one relay's service group, on a connection of
    its own to the relay's contact address."""
    async with open_session(parse_address(entry.contact), timeout=timeout) as session:
        request = _owner_request(state, entry, session, action, subject=subject, note=note)
        answer = await session.request(OwnerCommand(request=request))
    if not isinstance(answer, OwnerCommandResult):
        raise RelayProtocolError(f"expected owner_result, got {type(answer).__name__}")
    return answer


async def read_log(state: OwnerState, *, timeout: float = 15.0) -> list[dict[str, object]]:
    """The service-group log of every relay, as each relay keeps it (asked all at once)."""
    out: list[dict[str, object]] = [{"relay": entry.contact} for entry in state.relays]

    async def ask(entry: RelayEntry, item: dict[str, object]) -> None:
        try:
            async with open_session(parse_address(entry.contact), timeout=timeout) as session:
                request = _owner_request(state, entry, session, ACTION_READ_LOG)
                answer = await session.request(LogRequest(request=request))
            if not isinstance(answer, LogResult):
                raise RelayProtocolError(f"expected log_result, got {type(answer).__name__}")
            item.update(
                state=answer.state,
                entries=[
                    {"seq": e.seq, "at": e.at, "event": e.event, "detail": e.detail} for e in answer.entries
                ],
            )
        except RelayError as exc:
            item.update(error=exc.code, reason=exc.reason)

    async with trio.open_nursery() as nursery:
        for entry, item in zip(state.relays, out, strict=True):
            nursery.start_soon(ask, entry, item)
    return out


# --- admission: the owners' commands through each relay's service group ------------------


@dataclass(frozen=True)
class AdmissionView:
    """One relay's answer to an owner command."""

    relay: str
    state: str | None = None
    admission: str | None = None
    members: int | None = None
    pending: list[dict[str, object]] = field(default_factory=list)
    detail: str = ""
    error: str | None = None
    reason: str | None = None


async def owner_command(
    state: OwnerState,
    action: str,
    *,
    member: str = "",
    note: str = "",
    timeout: float = 15.0,
) -> list[AdmissionView]:
    """Send one owner command (``list_pending``, ``approve_member``, ...) to every listed relay.

    ``member`` is the member id as the pending list shows it (the member key, base64url).
    """
    with translated(from_relay=False):
        subject = b64d(member, length=32, what="member id") if member else b""
    targets = [entry for entry in state.relays if entry.listed and entry.group_address is not None]
    views: list[AdmissionView] = [AdmissionView(relay=entry.contact) for entry in targets]

    async def command(i: int, entry: RelayEntry) -> None:
        try:
            answer = await command_relay(state, entry, action, subject=subject, note=note, timeout=timeout)
            views[i] = AdmissionView(
                relay=entry.contact,
                state=answer.state,
                admission=answer.admission,
                members=answer.members,
                pending=[
                    {
                        "member": b64e(p.member),
                        "name": p.name,
                        "about": p.about,
                        "received_at": p.received_at,
                    }
                    for p in answer.pending
                ],
                detail=answer.detail,
            )
        except RelayError as exc:
            views[i] = AdmissionView(relay=entry.contact, error=exc.code, reason=exc.reason)

    async with trio.open_nursery() as nursery:
        for i, entry in enumerate(targets):
            nursery.start_soon(command, i, entry)
    return views
