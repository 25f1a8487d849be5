"""Protocol errors, each carrying the wire error code a peer is answered with.

Modelled on h11: a ``RemoteProtocolError`` means the peer sent something the
rules forbid (answer it with ``code`` and fail only that request or
connection); a ``LocalProtocolError`` means our own side tried to do something
the rules forbid.  This module must not import anything with I/O.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Every error code that can travel on the wire (see docs/protocol.md)."""

    # framing and decoding
    FRAME_TOO_LARGE = "frame_too_large"
    MALFORMED = "malformed"
    BAD_TYPE = "bad_type"
    UNEXPECTED_MESSAGE = "unexpected_message"
    UNSUPPORTED_VERSION = "unsupported_version"
    TIMEOUT = "timeout"
    # sealing and signatures
    SEAL_FAILED = "seal_failed"
    UNSUPPORTED_SUITE = "unsupported_suite"
    WRONG_RELAY = "wrong_relay"
    BAD_SIGNATURE = "bad_signature"
    UNAUTHORISED_OWNER = "unauthorised_owner"
    CHANNEL_MISMATCH = "channel_mismatch"
    INVITATION_STALE = "invitation_stale"
    SERVICE_GROUP_MISMATCH = "service_group_mismatch"
    # groups
    UNKNOWN_GROUP = "unknown_group"
    OUT_OF_ORDER = "out_of_order"
    STALE_PROFILE = "stale_profile"
    GROUP_CLOSED = "group_closed"
    # policy refusals
    KIND_NOT_ALLOWED = "kind_not_allowed"
    NAME_INVALID = "name_invalid"
    NAME_TOO_LONG = "name_too_long"
    DESCRIPTION_TOO_LONG = "description_too_long"
    DENIED = "denied"
    TOO_MANY_OWNERS = "too_many_owners"
    RELAY_FULL = "relay_full"
    REJECTED_BY_OPERATOR = "rejected_by_operator"
    SUSPENDED_BY_OPERATOR = "suspended_by_operator"
    REMOVED_BY_OPERATOR = "removed_by_operator"
    ACTIVATION_TIMEOUT = "activation_timeout"
    NOT_LISTED = "not_listed"
    # members
    REQUEST_STALE = "request_stale"
    RATE_LIMITED = "rate_limited"
    QUEUE_FULL = "queue_full"
    MEMBER_PROFILE_TOO_LARGE = "member_profile_too_large"
    ADMISSION_SUSPENDED = "admission_suspended"
    MEMBER_LIMIT = "member_limit"
    REFUSED_BY_OWNERS = "refused_by_owners"
    REQUEST_EXPIRED = "request_expired"
    UNKNOWN_MEMBER = "unknown_member"
    # channel traffic
    NOT_A_MEMBER = "not_a_member"
    EVENT_GAP = "event_gap"
    CHAIN_BROKEN = "chain_broken"
    EQUIVOCATION = "equivocation"
    BAD_TIMESTAMP = "bad_timestamp"
    EVENT_TOO_LARGE = "event_too_large"
    GROUP_NOT_ACTIVE = "group_not_active"
    DIRECT_MESSAGES_OFF = "direct_messages_off"
    DIRECT_MESSAGES_OVER_THRESHOLD = "direct_messages_over_threshold"
    INBOX_FULL = "inbox_full"
    # member messages, certificates and moderation (groups, and channels with comments)
    NOT_CERTIFIED = "not_certified"
    BANNED = "banned"
    MEMBER_POSTS_OFF = "member_posts_off"
    MESSAGE_TOO_LARGE = "message_too_large"
    SLOW_MODE = "slow_mode"
    BAD_REPLY = "bad_reply"
    NOT_A_MODERATOR = "not_a_moderator"
    SUPERSEDED = "superseded"
    # sessions and replays
    WRONG_SESSION = "wrong_session"
    DUPLICATE_OWNER = "duplicate_owner"
    # the relay's own trouble
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class ProtocolError(Exception):
    """Base of every rule violation; ``code`` is what goes on the wire."""

    code: ErrorCode

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"{code.value}: {reason}")
        self.code = code
        self.reason = reason


class RemoteProtocolError(ProtocolError):
    """The peer broke a rule; answer it with ``code`` and fail that request alone."""


class LocalProtocolError(ProtocolError):
    """Our own side tried something the rules forbid (a bug or a misuse)."""


class ServiceUnavailable(ProtocolError):
    """Our side cannot serve the request now (its store takes no writes: a full disk, say).

    Neither side broke a rule: the request fails alone with ``unavailable``, nothing of it
    was kept, and the peer may ask again later.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(ErrorCode.UNAVAILABLE, reason)


class PolicyRefusal(RemoteProtocolError):
    """The operator's policy refuses this profile; the refusal is remembered."""
