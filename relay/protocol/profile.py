"""The owner-authorisation chain, the signed profile, and the operator's profile policy.

A channel is named by the hash of its root key.  The root key (kept offline by
the owners) signs an :class:`OwnerCert` for each owner key; a cert may also be
signed by an owner that an earlier cert in the list authorised.  A profile is
valid only if it names the channel of its root key, every cert verifies in
order, and the profile itself is signed by an authorised owner.  The relay can
therefore neither add an owner nor swap a key.

Verification is split so that a hostile profile costs no more than an honest
one: :func:`check_profile` decodes everything and checks the structure (cert
count against the caller's ``max_owners``, duplicates, channels, who signed
what) without a signature; only then are the signatures checked, each once.
This module is pure: the caller passes the clock (``now``) and the limits in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from relay.protocol import crypto
from relay.protocol.encoding import decode
from relay.protocol.errors import ErrorCode, PolicyRefusal, RemoteProtocolError
from relay.protocol.messages import OwnerCert, Profile, Signed

MAX_SIGNED_BODY = 64 * 1024
# The most owner certs a profile may carry on the wire (``Profile.owners``).  The relay passes
# its policy's far lower ``max_owners``, which is checked before any signature.
MAX_OWNER_CERTS = 256

KINDS = ("channel", "group")
ADMISSION_MODES = ("auto", "approval")


@dataclass(frozen=True, slots=True)
class VerifiedProfile:
    """A profile whose chain and signature verified; ``signed`` holds the exact bytes."""

    profile: Profile
    signed: Signed
    owners: frozenset[bytes]


@dataclass(frozen=True, slots=True)
class CheckedProfile:
    """A profile that passed every check except its signatures (:func:`check_profile`).

    Nothing here is proven yet: a caller makes its own cheap checks against it (the invitation
    checks that its signer is one of ``owners``) and only then pays for :meth:`verify`.
    """

    profile: Profile
    signed: Signed
    owners: frozenset[bytes]

    def verify(self) -> VerifiedProfile:
        """The signatures, each once: the certs in chain order, then the profile's own."""
        verify_chain_signatures(self.profile.owners)
        crypto.verify(self.signed.signer, crypto.Label.PROFILE, self.signed.body, self.signed.sig)
        return VerifiedProfile(profile=self.profile, signed=self.signed, owners=self.owners)


def check_owner_chain(
    channel: bytes, root_key: bytes, certs: list[Signed], *, max_owners: int = MAX_OWNER_CERTS
) -> frozenset[bytes]:
    """The owner keys ``certs`` claim to authorise, from everything but their signatures.

    Costs no signature, so that a chain that is too long, repeats itself or does not hang
    together is refused for the price of decoding it.  Raises, in this order:
    ``channel_mismatch`` if the root key does not name the channel; ``too_many_owners`` (a
    :class:`PolicyRefusal`) for more than ``max_owners`` certs; a decoding error for a cert
    that does not decode; ``channel_mismatch`` for a cert of another channel;
    ``duplicate_owner`` for a cert that repeats an earlier one or authorises a key an earlier
    cert authorised; ``unauthorised_owner`` for a cert whose signer is neither the root nor a
    key an earlier cert authorised, or for an empty chain.
    """
    if not crypto.same_secret(crypto.channel_id(root_key), channel):
        raise RemoteProtocolError(
            ErrorCode.CHANNEL_MISMATCH, "the channel id is not the hash of the root key"
        )
    if len(certs) > max_owners:
        raise PolicyRefusal(
            ErrorCode.TOO_MANY_OWNERS,
            f"the profile has {len(certs)} owner certs; the limit is {max_owners}",
        )
    bodies = [
        decode(cert.body, OwnerCert, limit=MAX_SIGNED_BODY, what=f"owner cert {index}")
        for index, cert in enumerate(certs)
    ]
    authorised: dict[bytes, int] = {}  # owner key -> the index of the cert that authorised it
    for index, (cert, body) in enumerate(zip(certs, bodies, strict=True)):
        if body.channel != channel:
            raise RemoteProtocolError(
                ErrorCode.CHANNEL_MISMATCH, f"owner cert {index} is for another channel"
            )
        earlier = authorised.get(body.owner_key)
        if earlier is not None:
            what = "repeats" if cert == certs[earlier] else "authorises the key of"
            raise RemoteProtocolError(
                ErrorCode.DUPLICATE_OWNER, f"owner cert {index} {what} owner cert {earlier}"
            )
        if cert.signer != root_key and cert.signer not in authorised:
            raise RemoteProtocolError(
                ErrorCode.UNAUTHORISED_OWNER,
                f"owner cert {index} is signed by a key the root never authorised",
            )
        authorised[body.owner_key] = index
    if not authorised:
        raise RemoteProtocolError(ErrorCode.UNAUTHORISED_OWNER, "the profile lists no owner")
    return frozenset(authorised)


def verify_chain_signatures(certs: list[Signed]) -> None:
    """Each cert's signature, once, in chain order (``bad_signature``); the structure is
    :func:`check_owner_chain`'s."""
    for cert in certs:
        crypto.verify(cert.signer, crypto.Label.OWNER_CERT, cert.body, cert.sig)


def verify_owner_chain(
    channel: bytes, root_key: bytes, certs: list[Signed], *, max_owners: int = MAX_OWNER_CERTS
) -> frozenset[bytes]:
    """Return the owner keys the root authorises through ``certs``, in order.

    Everything :func:`check_owner_chain` checks first, then every cert's signature
    (``bad_signature``).
    """
    owners = check_owner_chain(channel, root_key, certs, max_owners=max_owners)
    verify_chain_signatures(certs)
    return owners


def check_profile(signed: Signed, *, max_owners: int = MAX_OWNER_CERTS) -> CheckedProfile:
    """Decode a signed profile and make every check that costs no signature.

    The body, the admission mode, the owner chain's structure (:func:`check_owner_chain`) and
    that the profile's signer is one of the owners it claims.
    """
    profile = decode(signed.body, Profile, limit=MAX_SIGNED_BODY, what="profile")
    if profile.admission not in ADMISSION_MODES:
        raise RemoteProtocolError(
            ErrorCode.BAD_TYPE,
            f"admission must be one of {', '.join(ADMISSION_MODES)}, not {profile.admission!r}",
        )
    owners = check_owner_chain(profile.channel, profile.root_key, profile.owners, max_owners=max_owners)
    if signed.signer not in owners:
        raise RemoteProtocolError(
            ErrorCode.UNAUTHORISED_OWNER, "the profile is signed by a key that is not an owner"
        )
    return CheckedProfile(profile=profile, signed=signed, owners=owners)


def verify_profile(signed: Signed, *, max_owners: int = MAX_OWNER_CERTS) -> VerifiedProfile:
    """Verify a signed profile end to end: the cheap checks first (:func:`check_profile`),
    then each signature once (root to certs to the profile).

    ``max_owners`` is the operator's cap (a relay passes its policy's); the default is the
    wire limit, for members and for profiles the relay already accepted.
    """
    return check_profile(signed, max_owners=max_owners).verify()


def check_succession(current: VerifiedProfile, newer: VerifiedProfile) -> None:
    """Whether ``newer`` may replace ``current`` (a higher version of the same channel).

    Certs cannot be revoked, so a removed owner still holds a cert the root signed; what it
    must not do is sign a newer profile that lists itself again.  So the newer version must
    be signed by an owner of ``current``, or by an owner whose cert in ``newer`` was issued
    after ``current`` was signed (``updated_at``, strictly: seconds), by the root or by an owner allowed
    this way: owners added since are followed, owners removed since cannot come back on an
    old cert.  Raises ``unauthorised_owner``.
    """
    allowed = set(current.owners)
    root = newer.profile.root_key
    since = current.profile.updated_at
    for cert in newer.profile.owners:  # chain order: a signer is authorised before it signs
        body = decode(cert.body, OwnerCert, limit=MAX_SIGNED_BODY, what="owner cert")
        if (cert.signer == root or cert.signer in allowed) and body.issued_at > since:
            allowed.add(body.owner_key)
    if newer.signed.signer not in allowed:
        raise RemoteProtocolError(
            ErrorCode.UNAUTHORISED_OWNER,
            f"profile version {newer.profile.version} is signed by a key that was not an owner "
            f"of version {current.profile.version} nor authorised since",
        )


@dataclass(frozen=True, slots=True)
class ProfilePolicy:
    """The operator's rules for the channels this relay will serve (``[policy]`` in relay.toml)."""

    kinds: tuple[str, ...] = KINDS
    max_name_length: int = 64
    max_description_length: int = 1024
    deny_patterns: tuple[str, ...] = ()
    max_owners: int = 16
    max_groups: int = 100_000
    approval: str = "auto"  # "auto" | "manual"
    activation_timeout: int = 7 * 24 * 3600
    invitation_max_age: int = 600
    _compiled: tuple[re.Pattern[str], ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        compiled = tuple(re.compile(p, re.IGNORECASE) for p in self.deny_patterns)
        object.__setattr__(self, "_compiled", compiled)

    def check(self, verified: VerifiedProfile) -> None:
        """Raise a :class:`PolicyRefusal` naming the first rule the profile breaks."""
        profile = verified.profile
        if profile.kind not in self.kinds:
            raise PolicyRefusal(
                ErrorCode.KIND_NOT_ALLOWED,
                f"kind {profile.kind!r} is not served here (allowed: {', '.join(self.kinds)})",
            )
        name = profile.name
        if not name.strip() or any(_unfit_for_a_name(c) for c in name):
            raise PolicyRefusal(
                ErrorCode.NAME_INVALID, "the name is empty or holds control or text-direction characters"
            )
        if len(name) > self.max_name_length:
            raise PolicyRefusal(
                ErrorCode.NAME_TOO_LONG,
                f"the name has {len(name)} characters; the limit is {self.max_name_length}",
            )
        if len(profile.description) > self.max_description_length:
            raise PolicyRefusal(
                ErrorCode.DESCRIPTION_TOO_LONG,
                f"the description has {len(profile.description)} characters; "
                f"the limit is {self.max_description_length}",
            )
        for pattern in self._compiled:
            if pattern.search(name) or pattern.search(profile.description):
                raise PolicyRefusal(
                    ErrorCode.DENIED, "the name or description matches the operator's deny list"
                )
        if len(verified.owners) > self.max_owners:
            raise PolicyRefusal(
                ErrorCode.TOO_MANY_OWNERS,
                f"the profile has {len(verified.owners)} owners; the limit is {self.max_owners}",
            )

    def summary(self) -> dict[str, object]:
        """What the relay tells the public about its policy (no deny patterns)."""
        return {
            "kinds": list(self.kinds),
            "max_name_length": self.max_name_length,
            "max_description_length": self.max_description_length,
            "max_owners": self.max_owners,
            "approval": self.approval,
            "activation_timeout": self.activation_timeout,
        }


def _unfit_for_a_name(char: str) -> bool:
    """C0/C1 controls, and the bidi controls that make a name read as another (U+202E...).

    Zero-width joiners stay allowed: emoji sequences need them.
    """
    code = ord(char)
    return code < 0x20 or 0x7F <= code < 0xA0 or 0x202A <= code <= 0x202E or 0x2066 <= code <= 0x2069
