"""The owners' client certifies the name a member signed, never the name a relay lists.

``relay.client.moderation.signed_listing`` reads a relay's ``list_uncertified`` entry through the
member's own signed join request; a relay that leaves it out, hands over another key's, one for
another channel, or altered bytes gets its listing refused with the code that says so.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from relay.client.moderation import signed_listing
from relay.protocol import crypto
from relay.protocol.errors import ProtocolError
from relay.protocol.membership import make_join_request
from relay.protocol.messages import MemberProfile, PendingMember, Signed

CHANNEL = bytes(range(32))


def _request(key: ed25519.Ed25519PrivateKey, *, name: str, channel: bytes = CHANNEL) -> Signed:
    return make_join_request(
        key,
        relay_fingerprint=bytes(32),
        channel=channel,
        address_id="a",
        profile=MemberProfile(name=name, about="hello"),
        session=bytes(32),
        now=1_700_000_000,
    )


def _listed(key: ed25519.Ed25519PrivateKey, join: Signed | None, name: str = "Mallory") -> PendingMember:
    return PendingMember(member=crypto.public_bytes(key), name=name, about="lies", received_at=0, join=join)


def test_the_name_certified_is_the_one_the_member_signed() -> None:
    ada = ed25519.Ed25519PrivateKey.generate()
    listed = signed_listing(_listed(ada, _request(ada, name="Ada")), CHANNEL)
    assert (listed.name, listed.about) == ("Ada", "hello")  # not the relay's "Mallory", "lies"


@pytest.mark.parametrize("lie", ["missing", "another_signer", "another_channel", "altered"])
def test_a_listing_without_the_member_s_own_request_is_refused(lie: str) -> None:
    ada, other = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    join: Signed | None = _request(ada, name="Ada")
    code = "bad_signature"
    if lie == "missing":
        join = None
    elif lie == "another_signer":
        join = _request(other, name="Ada")
    elif lie == "another_channel":
        join, code = _request(ada, name="Ada", channel=bytes(32)), "channel_mismatch"
    else:
        assert join is not None
        join = Signed(body=join.body.replace(b"Ada", b"Eve"), signer=join.signer, sig=join.sig)
    with pytest.raises(ProtocolError) as raised:
        signed_listing(_listed(ada, join), CHANNEL)
    assert raised.value.code == code
