"""What the relay does with verified requests: invitations, activation, the service log,
operator decisions, and activation time-outs.

Verification (signatures, chain, freshness, policy) happens here *before* a
transaction, on the trio thread; each state change is then one transaction
through the group-commit writer, so an answer always means "committed" and a
refused request writes nothing.  The state rules come from
``relay.protocol.state``; this module only applies them.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from dataclasses import dataclass, replace

import structlog
import trio

from relay.protocol import crypto
from relay.protocol.addresses import group_address, parse_address
from relay.protocol.encoding import b64e, decode, encode
from relay.protocol.errors import ErrorCode, PolicyRefusal, ProtocolError, RemoteProtocolError
from relay.protocol.invitation import (
    ACTION_READ_LOG,
    SEAL_PURPOSE,
    VerifiedInvitation,
    make_grant,
    verify_invitation,
    verify_owner_request,
)
from relay.protocol.messages import (
    Invite,
    InviteResult,
    LogEntry,
    LogRequest,
    LogResult,
    OwnerRequest,
    ProfileResult,
    ProfileUpdate,
    Signed,
)
from relay.protocol.profile import (
    MAX_SIGNED_BODY,
    ProfilePolicy,
    VerifiedProfile,
    check_profile,
    check_succession,
)
from relay.protocol.state import OWNERS_CLOSED, GroupState, Transition, transition
from relay.server.clock import Clock
from relay.server.identity import Identity
from relay.server.metrics import Metrics
from relay.server.pending import InvitationBudgets
from relay.server.profiles import VerifiedProfiles
from relay.server.signals import GroupSignals
from relay.store import groups
from relay.store.conn import Conn
from relay.store.errors import StoreUnavailable
from relay.store.groups import GroupRecord
from relay.store.opening import Store

log = structlog.get_logger("relay.service")


@dataclass
class PolicyHolder:
    """The current policy; SIGHUP swaps ``policy`` without touching connections."""

    policy: ProfilePolicy


class GroupService:
    def __init__(
        self,
        *,
        db: Store,
        identity: Identity,
        policy: PolicyHolder,
        public_base: str,
        metrics: Metrics,
        log_keep: int = 1000,
        profiles: VerifiedProfiles,
        budgets: InvitationBudgets,
        signals: GroupSignals,
        max_closed: int = 100_000,
        clock: Clock | None = None,
    ) -> None:
        self.db = db
        self.profiles = profiles
        self.budgets = budgets
        self.identity = identity
        self.policy = policy
        self.public_base = public_base
        self.metrics = metrics
        self.log_keep = log_keep
        self.max_closed = max_closed
        # Dates (stored, signed, compared with signed dates) and waits: see relay.server.clock.
        self.clock = clock or Clock()
        # Every committed change of a group's state or profile is told here (relay.server.signals).
        self.signals = signals
        # An active or closed group no longer waits for activation against its source's budget.
        signals.state_changed.connect(self._settle_pending)

    def now(self) -> int:
        """The wall time in whole seconds: every date the relay stores or checks."""
        return self.clock.now()

    def _settle_pending(self, group_id: int, state: GroupState) -> None:
        if state is GroupState.ACTIVE or state.terminal:
            self.budgets.settled(group_id)

    def check_owner(self, record: GroupRecord | None, request: OwnerRequest, signer: bytes) -> GroupRecord:
        """The group an owner request is about, if the signer is one of its owners.

        The service group id is the owners' shared secret for this relay; the signer must be
        an owner in the profile the relay holds (verified once, then kept: see
        :mod:`relay.server.profiles`).  Call it on the trio thread, never in a transaction.
        """
        if record is None or not crypto.same_secret(record.service_group, request.service_group):
            raise RemoteProtocolError(ErrorCode.UNKNOWN_GROUP, "no service group for this channel")
        if not record.profile:  # a refused invitation: only its digest and the reason are kept
            refusal = f"{record.reason_code}: {record.reason}"
            raise RemoteProtocolError(ErrorCode.GROUP_CLOSED, f"the relay refused this channel: {refusal}")
        if signer not in self.profiles.of(record.profile).owners:
            raise RemoteProtocolError(ErrorCode.UNAUTHORISED_OWNER, "only the channel's owners may do this")
        return record

    def address_of(self, record: GroupRecord) -> str | None:
        if record.address_id is None:
            return None
        return group_address(self.public_base, self.identity.fingerprint, record.address_id)

    # --- invitations -------------------------------------------------------

    async def invite(self, frame: Invite, source: str, session: bytes) -> InviteResult:
        """A sealed invitation from ``source`` (the budget key of the client's address), on a
        connection whose challenge is ``session``.

        The source's invitation budget is charged before anything is opened; a new group
        needs room in the source's pending budget (:mod:`relay.server.pending`).
        """
        self.budgets.charge(source, self.clock.monotonic())
        now = self.now()
        policy = self.policy.policy
        plaintext = self.identity.seal_keys.open(
            frame.suite, frame.sealed, crypto.seal_info(SEAL_PURPOSE, self.identity.fingerprint)
        )
        try:
            verified = verify_invitation(
                plaintext,
                relay_fingerprint=self.identity.fingerprint,
                session=session,
                now=now,
                max_age=policy.invitation_max_age,
                max_owners=policy.max_owners,
            )
        except PolicyRefusal as exc:
            # Refused before any signature was checked (too many owner certs): nothing proves
            # the channel's owners sent it, so the refusal is not remembered for the channel.
            self.metrics.inc("relay_invitations_total", outcome="refused")
            log.info("invitation.refused", code=exc.code.value, remembered=False)
            return InviteResult(status="refused", state="none", code=exc.code.value, reason=exc.reason)
        refusal: PolicyRefusal | None = None
        try:
            policy.check(verified.profile)
        except PolicyRefusal as exc:
            refusal = exc
        address_id = b64e(secrets.token_bytes(16))
        may_create = self.budgets.may_create(source)

        def register(conn: Conn) -> tuple[GroupRecord, bool]:
            # Two relay processes may take the first invitation for one channel at once: the
            # insert of the one that commits second finds the channel taken and skips, and
            # that process answers with the group the other made (one group, one address).
            for _ in range(2):
                found = self._register(conn, verified, refusal, address_id, policy, now, may_create)
                if found is not None:
                    return found
            raise RemoteProtocolError(ErrorCode.INTERNAL, "the channel's group keeps changing; ask again")

        try:
            record, created = await self.db.transact(register)
        except PolicyRefusal as exc:  # capacity: refused now, not remembered
            self.metrics.inc("relay_invitations_total", outcome="refused")
            log.info("invitation.refused", code=exc.code.value, remembered=False)
            return InviteResult(status="refused", state="none", code=exc.code.value, reason=exc.reason)
        if created and not record.state.terminal:
            self.budgets.created(source, record.id)
        return self._answer(record, verified, frame.suite)

    def _register(
        self,
        conn: Conn,
        verified: VerifiedInvitation,
        refusal: PolicyRefusal | None,
        address_id: str,
        policy: ProfilePolicy,
        now: int,
        may_create: bool,
    ) -> tuple[GroupRecord, bool] | None:
        """The group an invitation names, and whether this transaction created it; None when
        another relay process created the channel's group meanwhile (see ``invite``)."""
        invitation = verified.invitation
        existing = groups.by_channel(conn, invitation.channel)
        if existing is not None:
            if crypto.same_secret(existing.service_group, invitation.service_group):
                return existing, False
            if existing.state is not GroupState.REMOVED or existing.reason_code not in OWNERS_CLOSED:
                raise RemoteProtocolError(
                    ErrorCode.SERVICE_GROUP_MISMATCH,
                    "this relay already serves the channel through another service group",
                )
            # The owners closed the old group themselves (unlisted the relay, or never
            # activated it): a new service group starts afresh, the old address stays dead.
            groups.delete(conn, existing.id)
        new = _new_group(invitation.service_group, verified.profile)
        if refusal is not None:
            # Remembered as the profile's digest and the reason, not the profile: refusals are
            # what an attacker makes most cheaply, and each kept whole (up to 64 KiB) added up.
            record = groups.insert(
                conn,
                replace(new, profile=b"", profile_digest=hashlib.sha256(new.profile).digest()),
                state=GroupState.REJECTED,
                now=now,
                reason_code=refusal.code.value,
                reason=refusal.reason,
            )
            if record is None:
                return None
            groups.append_log(
                conn, record.id, now, "refused", f"{refusal.code.value}: {refusal.reason}", keep=self.log_keep
            )
            self._prune_closed(conn)
            return record, True
        if not may_create:
            raise self.budgets.refuse_new()
        if groups.count_live(conn) >= policy.max_groups:
            raise PolicyRefusal(
                ErrorCode.RELAY_FULL, f"this relay serves its maximum of {policy.max_groups} groups"
            )
        if policy.approval == "manual":
            record = groups.insert(conn, new, state=GroupState.INVITED, now=now)
            if record is None:
                return None
            groups.append_log(
                conn, record.id, now, "pending_approval", "waiting for the operator", keep=self.log_keep
            )
            return record, True
        record = groups.insert(
            conn,
            new,
            state=GroupState.ACCEPTED,
            now=now,
            address_id=address_id,
            activation_deadline=now + policy.activation_timeout,
        )
        if record is None:
            return None
        groups.append_log(
            conn, record.id, now, "address_issued", self.address_of(record) or "", keep=self.log_keep
        )
        return record, True

    def _prune_closed(self, conn: Conn) -> None:
        """Remembered refusals are bounded too: fresh root keys cost an attacker nothing."""
        dropped = groups.prune_closed(conn, self.max_closed)
        if dropped:
            self.budgets.bounds.hit_from_thread("max_closed_groups", self.max_closed, dropped)

    def _answer(self, record: GroupRecord, verified: VerifiedInvitation, suite: str) -> InviteResult:
        state = record.state
        bound = structlog.contextvars.bound_contextvars(group=record.id)
        with bound:
            if state.has_address:
                assert record.address_id is not None and record.address_issued_at is not None
                address = self.address_of(record)
                assert address is not None
                grant = make_grant(
                    self.identity.signing_key, verified.invitation, address, record.address_issued_at
                )
                self.metrics.inc("relay_invitations_total", outcome="accepted")
                log.info("invitation.accepted", state=state.value, suite=suite)
                return InviteResult(status="accepted", state=state.value, grant=grant)
            if state is GroupState.INVITED:
                self.metrics.inc("relay_invitations_total", outcome="pending_approval")
                log.info("invitation.pending_approval")
                return InviteResult(
                    status="pending_approval",
                    state=state.value,
                    reason="the operator approves new groups by hand; ask again later",
                )
            self.metrics.inc("relay_invitations_total", outcome="refused")
            log.info("invitation.refused", code=record.reason_code, remembered=True)
            return InviteResult(
                status="refused", state=state.value, code=record.reason_code, reason=record.reason
            )

    # --- activation ----------------------------------------------------------

    async def group_by_address(self, address_id: str) -> GroupRecord | None:
        return await self.db.transact(lambda conn: groups.by_address(conn, address_id))

    async def update_profile(self, address_id: str, frame: ProfileUpdate) -> ProfileResult:
        """Activation, unlisting or a newer profile, checked cheap-first and outside the writer.

        The stored group decides first what is worth a signature check (its channel, a newer
        version); then the newcomer is verified, and its succession checked against the
        stored profile (verified once, from the cache).  The transaction re-checks only that
        the stored version is still the one the succession was checked against.
        """
        for _ in range(3):
            record = await self.group_by_address(address_id)
            if record is None:
                raise RemoteProtocolError(ErrorCode.UNKNOWN_GROUP, "no group has this address")
            checked = check_profile(frame.profile, max_owners=self.policy.policy.max_owners)
            newer = checked.profile
            if newer.channel != record.channel:
                raise RemoteProtocolError(ErrorCode.CHANNEL_MISMATCH, "the profile is for another channel")
            transition(record.state, Transition.ACTIVATE)  # a closed group refuses before any check
            _check_newer(newer.version, record.profile_version)
            current = self.profiles.of(record.profile)
            verified = checked.verify()
            self.policy.policy.check(verified)
            # Certs cannot be revoked: without this, an owner removed in the stored version could
            # sign a newer one that lists itself again on its old root-signed cert.
            check_succession(current, verified)
            try:
                return await self._apply_profile(address_id, frame, verified, record.profile_version)
            except _StoredProfileChanged:
                continue  # another update landed in between: check against that one
        raise RemoteProtocolError(ErrorCode.STALE_PROFILE, "the profile keeps changing; send it again")

    async def _apply_profile(
        self, address_id: str, frame: ProfileUpdate, verified: VerifiedProfile, checked_against: int
    ) -> ProfileResult:
        listed = self._lists_me(verified, address_id)
        new = _new_group(b"", verified)  # set_profile takes the profile's fields, not the group id
        self.profiles.remember(new.profile, verified)
        now = self.now()

        def apply(conn: Conn) -> tuple[GroupState, GroupState, int, int, bytes]:
            record = groups.by_address(conn, address_id)
            if record is None:
                raise RemoteProtocolError(ErrorCode.UNKNOWN_GROUP, "no group has this address")
            version = verified.profile.version
            after = transition(record.state, Transition.ACTIVATE if listed else Transition.UNLIST)
            _check_newer(version, record.profile_version)
            if record.profile_version != checked_against:
                raise _StoredProfileChanged()
            groups.set_profile(conn, record.id, new, version, now)
            groups.append_log(
                conn, record.id, now, "profile_updated", f"version {version}", keep=self.log_keep
            )
            if after is not record.state:
                reason_code = None if after is GroupState.ACTIVE else ErrorCode.NOT_LISTED.value
                reason = None if after is GroupState.ACTIVE else "a newer profile no longer lists this relay"
                groups.set_state(conn, record.id, after, now, reason_code=reason_code, reason=reason)
                groups.append_log(
                    conn,
                    record.id,
                    now,
                    after.value,
                    reason or "listed in the owner-signed profile",
                    keep=self.log_keep,
                )
                if after.terminal:
                    self._prune_closed(conn)
            elif not listed:
                groups.append_log(
                    conn,
                    record.id,
                    now,
                    "warning",
                    "the profile does not list this relay's address yet",
                    keep=self.log_keep,
                )
            return record.state, after, version, record.id, record.profile

        try:
            before, after, version, group_id, replaced = await self.db.transact(apply)
        except BaseException:
            self.profiles.forget(new.profile)  # not stored (whoever stores it later verifies again)
            raise
        self.profiles.forget(replaced)  # the store no longer holds it: its memory goes back now
        self.signals.profile_changed.send(group_id, frame.profile, after)
        with structlog.contextvars.bound_contextvars(group=group_id):
            if after is not before:
                self.signals.state_changed.send(group_id, after)
                if after is GroupState.ACTIVE:
                    self.metrics.inc("relay_activations_total")
                    log.info("group.activated", version=version)
                else:
                    log.info("group.state_changed", before=before.value, after=after.value, version=version)
            else:
                log.info("group.profile_updated", version=version, listed=listed)
        return ProfileResult(state=after.value, version=version)

    def _lists_me(self, verified: VerifiedProfile, address_id: str) -> bool:
        for text in verified.profile.relays:
            try:
                address = parse_address(text)
            except ProtocolError:
                continue
            if address.address_id == address_id and crypto.same_secret(
                address.fingerprint, self.identity.fingerprint
            ):
                return True
        return False

    # --- the service-group log -----------------------------------------------

    async def read_log(self, frame: LogRequest, session: bytes) -> LogResult:
        request = verify_owner_request(
            frame.request,
            actions=(ACTION_READ_LOG,),
            relay_fingerprint=self.identity.fingerprint,
            session=session,
            now=self.now(),
            max_age=self.policy.policy.invitation_max_age,
        )

        def read(conn: Conn) -> tuple[GroupRecord | None, list[groups.LogRow]]:
            record = groups.by_channel(conn, request.channel)
            if record is None:
                return None, []
            return record, groups.read_log(conn, record.id)

        record, rows = await self.db.read(read)
        record = self.check_owner(record, request, frame.request.signer)
        entries = [LogEntry(seq=r.seq, at=r.at, event=r.event, detail=r.detail) for r in rows]
        return LogResult(state=record.state.value, entries=entries)

    # --- operator decisions and time-outs ------------------------------------

    async def approve(self, group_id: int) -> GroupRecord:
        now = self.now()
        timeout = self.policy.policy.activation_timeout
        address_id = b64e(secrets.token_bytes(16))

        def apply(conn: Conn) -> GroupRecord:
            record = _require(conn, group_id)
            after = transition(record.state, Transition.APPROVE)
            # Not if another relay process approved it first (one address, ever).
            issued = groups.issue_address(conn, group_id, address_id, now, now + timeout)
            groups.set_state(conn, group_id, after, now)
            record = _require(conn, group_id)
            if issued:
                groups.append_log(
                    conn, group_id, now, "address_issued", self.address_of(record) or "", keep=self.log_keep
                )
            return record

        record = await self.db.transact(apply)
        self.signals.state_changed.send(group_id, record.state)
        log.info("group.approved", group=group_id)
        return record

    async def reject(self, group_id: int, reason: str) -> GroupRecord:
        now = self.now()

        def apply(conn: Conn) -> GroupRecord:
            record = _require(conn, group_id)
            after = transition(record.state, Transition.REJECT)
            groups.set_state(
                conn, group_id, after, now, reason_code=ErrorCode.REJECTED_BY_OPERATOR.value, reason=reason
            )
            groups.append_log(
                conn, group_id, now, "refused", f"rejected by the operator: {reason}", keep=self.log_keep
            )
            record = _require(conn, group_id)
            self._prune_closed(conn)
            return record

        record = await self.db.transact(apply)
        self.signals.state_changed.send(group_id, record.state)
        log.info("group.rejected", group=group_id)
        return record

    async def run_activation_sweep(self) -> None:
        """Expire groups the owners never activated; checks a few times per time-out, until
        cancelled (the daemon owns the task)."""
        while True:
            interval = min(60.0, max(0.2, self.policy.policy.activation_timeout / 4))
            await trio.sleep(interval)
            with contextlib.suppress(StoreUnavailable):  # logged by the store; next round, then
                await self.expire_overdue()

    async def expire_overdue(self) -> int:
        """Remove accepted groups whose owners never activated them in time."""
        now = self.now()

        def apply(conn: Conn) -> list[int]:
            expired = []
            for record in groups.overdue(conn, now):
                after = transition(record.state, Transition.TIMEOUT)
                groups.set_state(
                    conn,
                    record.id,
                    after,
                    now,
                    reason_code=ErrorCode.ACTIVATION_TIMEOUT.value,
                    reason="the owners did not list this relay before the activation time-out",
                )
                groups.append_log(
                    conn, record.id, now, after.value, "activation time-out", keep=self.log_keep
                )
                expired.append(record.id)
            if expired:
                self._prune_closed(conn)
            return expired

        expired = await self.db.transact(apply)
        for group_id in expired:
            log.info("group.activation_timeout", group=group_id)
            self.signals.state_changed.send(group_id, GroupState.REMOVED)
        return len(expired)

    # --- operator: suspend, resume, remove ---

    async def suspend(self, group_id: int, reason: str) -> GroupRecord:
        """Stop serving an active group for now; its address and members stay (``resume``)."""
        record = await self._operator_change(
            group_id,
            Transition.SUSPEND,
            ErrorCode.SUSPENDED_BY_OPERATOR,
            reason,
            f"suspended by the operator: {reason}",
        )
        log.info("group.suspended", group=group_id, reason=reason)
        return record

    async def resume(self, group_id: int) -> GroupRecord:
        """Serve a group the operator suspended again."""
        record = await self._operator_change(
            group_id, Transition.RESUME, None, None, "resumed by the operator"
        )
        log.info("group.resumed", group=group_id)
        return record

    async def remove(self, group_id: int, reason: str) -> GroupRecord:
        """Stop serving a group for good; repeated invitations get ``removed_by_operator``."""
        record = await self._operator_change(
            group_id,
            Transition.REMOVE,
            ErrorCode.REMOVED_BY_OPERATOR,
            reason,
            f"removed by the operator: {reason}",
        )
        log.info("group.removed", group=group_id, reason=reason)
        return record

    async def _operator_change(
        self,
        group_id: int,
        event: Transition,
        code: ErrorCode | None,
        reason: str | None,
        log_detail: str,
    ) -> GroupRecord:
        """One operator transition in one transaction, told to the owners in the service log."""
        now = self.now()

        def apply(conn: Conn) -> GroupRecord:
            record = _require(conn, group_id)
            after = transition(record.state, event)
            groups.set_state(
                conn, group_id, after, now, reason_code=code.value if code else None, reason=reason
            )
            groups.append_log(conn, group_id, now, after.value, log_detail, keep=self.log_keep)
            record = _require(conn, group_id)  # before pruning, which may forget it at once
            if after.terminal:
                self._prune_closed(conn)
            return record

        record = await self.db.transact(apply)
        self.signals.state_changed.send(group_id, record.state)
        return record


def _new_group(service_group: bytes, verified: VerifiedProfile) -> groups.NewGroup:
    """The row fields a verified profile gives: its exact bytes, and the rules copied out of it."""
    profile = verified.profile
    return groups.NewGroup(
        channel=profile.channel,
        service_group=service_group,
        profile=encode(verified.signed),
        profile_version=profile.version,
        kind=profile.kind,
        name=profile.name[:256],
        admission=profile.admission,
        max_members=profile.max_members,
    )


def _check_newer(version: int, stored: int) -> None:
    if version <= stored:
        raise RemoteProtocolError(
            ErrorCode.STALE_PROFILE,
            f"profile version {version} is not newer than the stored version {stored}",
        )


class _StoredProfileChanged(Exception):
    """The stored profile changed between the checks and the transaction: check again."""


def _require(conn: Conn, group_id: int) -> GroupRecord:
    record = groups.by_id(conn, group_id)
    if record is None:
        raise RemoteProtocolError(ErrorCode.UNKNOWN_GROUP, f"no group {group_id}")
    return record


def decode_signed(blob: bytes) -> Signed:
    return decode(blob, Signed, limit=MAX_SIGNED_BODY * 2, what="stored profile")
