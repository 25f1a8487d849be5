"""Stored profiles, each verified once: the owner keys of every group the relay serves.

Owner commands, profile updates, posts and direct invitations all ask "is this key an
owner of the group?", and the answer is in the owner-signed profile the relay stored.
Verifying that profile costs a signature per owner cert and one more; doing it again
for every request would let any owner (anyone can make a channel) spend the relay's
CPU at will, and doing it inside a transaction would stall the database writer that
every group waits on.  So a stored profile is verified once, on the trio thread, and
its :class:`VerifiedProfile` kept here, keyed by the SHA-256 of the stored bytes: a
group's next profile has other bytes and another key, so nothing is ever stale, and a
profile verified on intake is put here before it is stored, so it is never verified
twice.  The profile a newer one replaces is forgotten once the newer one is stored (and a
profile verified for an update that did not happen, once the update failed): nothing
asks for it again, and an owner publishing version after version would otherwise fill
the cache with versions the store no longer holds, memory not given back until the least
recently used order reached them.

The cache is bounded by the bytes of the profiles it holds (least recently used first
out); going over counts as a bound hit (``verified_profiles``).  An evicted profile is
simply verified again when next needed.

Must not: verify on the database thread, or trust a profile it did not verify itself.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from relay.protocol.encoding import decode
from relay.protocol.messages import Signed
from relay.protocol.profile import MAX_SIGNED_BODY, VerifiedProfile, verify_profile
from relay.server.bounds import Bounds

# What one entry costs beyond its body: the decoded Profile, the owner set, the dict slot.
ENTRY_OVERHEAD = 2048


class VerifiedProfiles:
    """Stored profile bytes -> their verification, done once."""

    def __init__(self, max_bytes: int, bounds: Bounds) -> None:
        self.max_bytes = max_bytes
        self.bounds = bounds
        self._entries: OrderedDict[bytes, tuple[VerifiedProfile, int]] = OrderedDict()
        self._bytes = 0

    def of(self, stored: bytes) -> VerifiedProfile:
        """The verification of a profile as the store holds it (an encoded ``Signed``).

        Raises what :func:`verify_profile` raises if the stored bytes do not verify (a
        damaged database); the relay stored only profiles that did.
        """
        key = hashlib.sha256(stored).digest()
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry[0]
        signed = decode(stored, Signed, limit=MAX_SIGNED_BODY * 2, what="stored profile")
        verified = verify_profile(signed)
        self.bounds.metrics.inc("relay_profile_verifications_total")
        self._put(key, verified, len(stored))
        return verified

    def remember(self, stored: bytes, verified: VerifiedProfile) -> None:
        """Keep a profile verified on intake under the bytes it is stored as."""
        self._put(hashlib.sha256(stored).digest(), verified, len(stored))

    def forget(self, stored: bytes) -> None:
        """Drop a profile the store no longer holds (a group's replaced version), if kept."""
        entry = self._entries.pop(hashlib.sha256(stored).digest(), None)
        if entry is not None:
            self._bytes -= entry[1]

    def _put(self, key: bytes, verified: VerifiedProfile, size: int) -> None:
        cost = 2 * size + ENTRY_OVERHEAD  # the signed bytes, and the decoded fields beside them
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        self._entries[key] = (verified, cost)
        self._bytes += cost
        evicted = 0
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped
            evicted += 1
        if evicted:
            self.bounds.hit("verified_profiles", self.max_bytes, evicted)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes
