"""The member's following rules (relay/protocol/follow.py), with plain bytes and no I/O."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol import crypto
from relay.protocol.encoding import encode
from relay.protocol.events import ChainHead, make_event, stored_event
from relay.protocol.follow import Accepted, Finding, FindingCode, Follower, Output, ProfileAdopted
from relay.protocol.heads import make_head, verify_head
from relay.protocol.messages import OwnerCert, Profile, Signed
from relay.protocol.profile import VerifiedProfile, verify_profile

ROOT = ed25519.Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
OWNER = ed25519.Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)
OWNER2 = ed25519.Ed25519PrivateKey.from_private_bytes(bytes([3]) * 32)
STRANGER = ed25519.Ed25519PrivateKey.from_private_bytes(bytes([4]) * 32)
RELAY_KEY = ed25519.Ed25519PrivateKey.from_private_bytes(bytes([5]) * 32)
RELAY2_KEY = ed25519.Ed25519PrivateKey.from_private_bytes(bytes([6]) * 32)
CHANNEL = crypto.channel_id(crypto.public_bytes(ROOT))
NOW = 1_800_000_000
A, B, C = "relay-a", "relay-b", "relay-c"


def cert(owner: ed25519.Ed25519PrivateKey, signer: ed25519.Ed25519PrivateKey = ROOT, at: int = NOW) -> Signed:
    body = encode(OwnerCert(channel=CHANNEL, owner_key=crypto.public_bytes(owner), issued_at=at))
    return crypto.signed(signer, crypto.Label.OWNER_CERT, body)


def profile(
    version: int = 1,
    owners: tuple[ed25519.Ed25519PrivateKey, ...] = (OWNER,),
    signer: ed25519.Ed25519PrivateKey = OWNER,
    certs: list[Signed] | None = None,
    name: str = "News",
    at: int = NOW,
) -> Signed:
    body = Profile(
        channel=CHANNEL,
        root_key=crypto.public_bytes(ROOT),
        version=version,
        kind="channel",
        name=name,
        description="",
        owners=certs if certs is not None else [cert(o) for o in owners],
        relays=[],
        updated_at=at,
    )
    return crypto.signed(signer, crypto.Label.PROFILE, encode(body))


PROFILE = verify_profile(profile())


def chain(
    n: int, *, after: ChainHead | None = None, key: ed25519.Ed25519PrivateKey = OWNER, tag: str = ""
) -> list[Signed]:
    head, out = after or ChainHead(), []
    for _ in range(n):
        signed = make_event(
            key, channel=CHANNEL, after=head, body=f"post {head.seq + 1}{tag}".encode(), now=NOW
        )
        head = ChainHead.of(stored_event(signed))
        out.append(signed)
    return out


def head_of(signed: Signed) -> ChainHead:
    return ChainHead.of(stored_event(signed))


def follower(relays: tuple[str, ...] = (A, B), prof: VerifiedProfile = PROFILE, **kwargs: object) -> Follower:
    return Follower(channel=CHANNEL, profile=prof, relays=relays, **kwargs)  # type: ignore[arg-type]


def feed(f: Follower, relay: str, events: list[Signed], *, head: int | None = None) -> list[Output]:
    out = f.subscribed(relay, head_seq=head if head is not None else 0, first_seq=1, profile_version=1)
    for signed in events:
        out += f.event(relay, signed)
    return out


def accepted(out: list[Output]) -> list[int]:
    return [o.event.seq for o in out if isinstance(o, Accepted)]


def findings(out: list[Output]) -> list[tuple[str, FindingCode]]:
    return [(o.relay, o.code) for o in out if isinstance(o, Finding)]


def signed_head(key: ed25519.Ed25519PrivateKey, at: ChainHead) -> tuple[bytes, object]:
    fingerprint = crypto.fingerprint(crypto.public_bytes(key))
    signed = make_head(key, relay_fingerprint=fingerprint, channel=CHANNEL, head=at, now=NOW)
    return fingerprint, verify_head(signed, relay_key=crypto.public_bytes(key), channel=CHANNEL)


def test_two_honest_relays_give_each_event_once_in_order() -> None:
    events = chain(5)
    f = follower()
    out = (
        feed(f, A, events[:3], head=5)
        + feed(f, B, events, head=5)
        + [o for e in events[3:] for o in f.event(A, e)]
    )
    assert accepted(out) == [1, 2, 3, 4, 5]
    assert findings(out + f.finish(NOW)) == []
    assert f.delivered_seq == 5 and f.last_id == head_of(events[-1]).id
    first = [o for o in out if isinstance(o, Accepted)]
    assert [o.relay for o in first] == [A, A, A, B, B]


def test_findings_are_immutable_values() -> None:
    finding = Finding(A, FindingCode.FORK, "detail", 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        finding.code = FindingCode.EVENT_GAP  # type: ignore[misc]
    assert finding == Finding(A, FindingCode.FORK, "detail", 3) and finding.is_lie
    assert not Finding(A, FindingCode.RELAY_BEHIND, "x").is_lie


def test_an_altered_body_is_a_bad_signature_and_is_not_shown() -> None:
    one, two, three = chain(3)
    altered = Signed(body=two.body.replace(b"post 2", b"post X"), signer=two.signer, sig=two.sig)
    f = follower()
    out = feed(f, B, [one, altered, three], head=3)
    assert findings(out) == [(B, FindingCode.BAD_SIGNATURE)]  # once: not again as a gap at 3
    bad = next(o for o in out if isinstance(o, Finding) and o.code is FindingCode.BAD_SIGNATURE)
    assert bad.proof == (altered,)
    assert accepted(out) == [1]  # 3 waits for the real 2
    out = feed(f, A, [one, two, three], head=3)
    assert accepted(out) == [2, 3]


def test_an_event_signed_by_a_stranger_is_unauthorised_live_at_once_and_in_history_at_the_end() -> None:
    events = chain(2)
    injected = chain(1, after=head_of(events[-1]), key=STRANGER)[0]
    f = follower()
    out = feed(f, B, [*events, injected], head=3)  # in B's history, as its head
    assert accepted(out) == [1, 2] and findings(out) == []
    assert findings(f.finish(NOW)) == [(B, FindingCode.UNAUTHORISED_OWNER)]
    live = follower()
    out = feed(live, B, events, head=2) + live.event(B, injected)
    assert findings(out) == [(B, FindingCode.UNAUTHORISED_OWNER)]
    assert accepted(out) == [1, 2]


def test_a_former_owners_history_is_accepted_when_a_current_owners_event_chains_over_it() -> None:
    by_old = chain(2, key=OWNER2)
    later = chain(1, after=head_of(by_old[-1]))
    f = follower()  # the current profile lists OWNER only: OWNER2 was removed
    out = feed(f, A, by_old, head=3)
    assert accepted(out) == [] and findings(out) == []
    out = f.event(A, later[0])
    assert accepted(out) == [1, 2, 3] and findings(out + f.finish(NOW)) == []


def test_a_reordered_stream_is_reported_and_still_shown_in_order_once() -> None:
    one, two, three = chain(3)
    f = follower()
    out = feed(f, B, [one, three, two], head=3)
    assert findings(out) == [(B, FindingCode.EVENT_GAP), (B, FindingCode.OUT_OF_ORDER)]
    assert accepted(out) == [1, 2, 3]


def test_an_omitted_event_is_a_gap_of_that_relay_while_another_relay_has_it() -> None:
    events = chain(4)
    f = follower()
    out = feed(f, A, events, head=4) + feed(f, B, [events[0], events[2], events[3]], head=4)
    assert accepted(out) == [1, 2, 3, 4]
    assert findings(out) == [(B, FindingCode.EVENT_GAP)]
    gap = next(o for o in out if isinstance(o, Finding))
    assert gap.seq == 2


def test_an_omitted_last_event_is_a_gap_when_the_history_ends_short_of_the_announced_head() -> None:
    events = chain(3)
    f = follower((A,))
    out = feed(f, A, events[:2], head=3) + f.history_done(A)
    assert findings(out) == [(A, FindingCode.EVENT_GAP)]


def test_a_gap_no_relay_fills_is_reported_at_the_end() -> None:
    events = chain(4)
    f = follower((A,), after_seq=0, after_id=bytes(32))
    out = feed(f, A, [events[0], events[2], events[3]], head=4)
    assert accepted(out) == [1] and findings(out) == [(A, FindingCode.EVENT_GAP)]
    f2 = follower((A,), after_seq=1, after_id=head_of(events[0]).id)
    out = feed(f2, A, [events[2], events[3]], head=4)  # its stream starts past --since
    assert findings(out) == [(A, FindingCode.EVENT_GAP)]
    assert findings(f2.finish(NOW)) == []  # told once
    # a relay whose own stream looks whole, past a gap no relay fills: told at the end
    f3 = follower()
    out = feed(f3, A, events[:1], head=1) + feed(f3, B, events[2:], head=4)
    assert accepted(out) == [1] and findings(out) == []
    assert findings(f3.finish(NOW)) == [(B, FindingCode.EVENT_GAP), (A, FindingCode.RELAY_BEHIND)]


def test_a_relay_that_stays_behind_is_reported_once_after_the_grace_period() -> None:
    events = chain(5)
    f = follower(behind_threshold=1)
    feed(f, A, events, head=5)
    feed(f, B, events[:3], head=3)
    assert f.check_behind(100.0, grace=10) == []
    assert findings(f.check_behind(111.0, grace=10)) == [(B, FindingCode.RELAY_BEHIND)]
    assert f.check_behind(120.0, grace=10) == []  # told once
    f.event(B, events[3])  # within the threshold again
    assert f.check_behind(130.0, grace=10) == []
    near = follower()
    feed(near, A, events, head=5)
    feed(near, B, events[:4], head=4)
    assert findings(near.finish(NOW)) == [(B, FindingCode.RELAY_BEHIND)]  # threshold 0 at the end


def test_an_older_profile_is_stale_a_newer_one_is_adopted() -> None:
    newer = verify_profile(profile(version=3))
    f = follower(prof=newer)
    assert findings(f.subscribed(B, head_seq=0, first_seq=1, profile_version=2)) == [
        (B, FindingCode.STALE_PROFILE)
    ]
    assert findings(f.profile_seen(B, profile(version=2))) == [(B, FindingCode.STALE_PROFILE)]
    assert f.profile_seen(A, profile(version=3)) == []
    assert findings(f.profile_seen(A, profile(version=3, name="Other"))) == [(A, FindingCode.FORK)]
    out = f.profile_seen(A, profile(version=4, owners=(OWNER, OWNER2)))
    assert isinstance(out[0], ProfileAdopted) and f.profile.profile.version == 4
    # OWNER2's live events are now accepted
    events = chain(1, key=OWNER2)
    assert accepted(
        feed(f, A, events, head=0) + f.event(A, chain(1, after=head_of(events[0]), key=OWNER2)[0])
    ) == [1, 2]


def test_a_swapped_owner_key_in_a_profile_is_unauthorised() -> None:
    f = follower()
    swapped = profile(version=2, certs=[cert(STRANGER, signer=STRANGER)], signer=STRANGER)
    assert findings(f.profile_seen(B, swapped)) == [(B, FindingCode.UNAUTHORISED_OWNER)]
    resigned = profile(version=2, certs=[cert(OWNER)], signer=STRANGER)
    assert findings(f.profile_seen(C, resigned)) == [(C, FindingCode.UNAUTHORISED_OWNER)]
    assert f.profile.profile.version == 1


def test_two_branches_from_two_relays_are_a_fork_with_both_events_as_proof() -> None:
    common = chain(2)
    branch1 = chain(2, after=head_of(common[-1]), tag="/one")
    branch2 = chain(2, after=head_of(common[-1]), tag="/two")
    f = follower()
    out = feed(f, A, [*common, *branch1], head=4) + feed(f, B, [*common, *branch2], head=4)
    assert accepted(out) == [1, 2, 3, 4]
    assert findings(out) == [(B, FindingCode.FORK)]  # once, at the first differing event
    fork = next(o for o in out if isinstance(o, Finding))
    assert fork.seq == 3 and set(fork.proof) == {branch1[0], branch2[0]}


def test_a_branch_shown_to_a_newcomer_is_caught_by_another_relays_signed_head() -> None:
    common = chain(2)
    branch1 = chain(1, after=head_of(common[-1]), tag="/one")
    branch2 = chain(1, after=head_of(common[-1]), tag="/two")
    f = follower()
    out = feed(f, B, [*common, *branch2], head=3)  # only the liar's stream arrives
    assert accepted(out) == [1, 2, 3]
    _, head_a = signed_head(RELAY_KEY, head_of(branch1[0]))
    out = f.head(A, head_a, branch1[0])  # type: ignore[arg-type]
    assert findings(out) == [(A, FindingCode.FORK)]
    # two relays' signed heads disagreeing at one sequence number are proof on their own
    g = follower()
    _, head_b = signed_head(RELAY2_KEY, head_of(branch2[0]))
    assert g.head(A, head_a) == []  # type: ignore[arg-type]
    out = g.head(B, head_b)  # type: ignore[arg-type]
    assert findings(out) == [(B, FindingCode.FORK)]
    fork = next(o for o in out if isinstance(o, Finding))
    assert {s.signer for s in fork.proof} == {crypto.public_bytes(RELAY_KEY), crypto.public_bytes(RELAY2_KEY)}
    # a head seen before the event: the event that arrives later is checked against it
    h = follower()
    h.head(A, head_a)  # type: ignore[arg-type]
    out = feed(h, B, [*common, *branch2], head=3)
    assert (A, FindingCode.FORK) in findings(out)


def test_a_head_whose_event_is_another_is_a_bad_head() -> None:
    events = chain(2)
    _, head = signed_head(RELAY_KEY, head_of(events[1]))
    f = follower()
    assert findings(f.head(A, head, events[0])) == [(A, FindingCode.BAD_HEAD)]  # type: ignore[arg-type]


def test_a_relay_mixing_two_branches_in_its_stream_breaks_the_chain() -> None:
    common = chain(1)
    branch1 = chain(2, after=head_of(common[-1]), tag="/one")
    branch2 = chain(2, after=head_of(common[-1]), tag="/two")
    f = follower((B,))
    out = feed(f, B, [common[0], branch1[0], branch2[1]], head=3)
    assert (B, FindingCode.CHAIN_BROKEN) in findings(out)
    assert accepted(out) == [1, 2]


def test_since_anchors_the_chain() -> None:
    events = chain(3)
    other = chain(1, after=head_of(events[0]), tag="/other")
    f = follower((A,), after_seq=2, after_id=head_of(events[1]).id)
    assert accepted(feed(f, A, [events[2]], head=3)) == [3]
    g = follower((A,), after_seq=1, after_id=head_of(events[0]).id)
    assert accepted(feed(g, A, events[1:], head=3)) == [2, 3]
    # an event 2 that does not chain onto the event 1 this member saw is a fork
    h = follower((A,), after_seq=1, after_id=crypto.digest(b"another event one"))
    out = feed(h, A, other, head=2)
    assert findings(out) == [(A, FindingCode.FORK)] and accepted(out) == []
    # nothing after --since: the history is done at once and a later event is live
    done = follower((A,), after_seq=3, after_id=head_of(events[2]).id)
    done.subscribed(A, head_seq=3, first_seq=1, profile_version=1)
    assert findings(done.event(A, chain(1, after=head_of(events[2]), key=STRANGER)[0])) == [
        (A, FindingCode.UNAUTHORISED_OWNER)
    ]


def test_an_event_of_another_channel_or_an_undecodable_one_is_named() -> None:
    other_root = ed25519.Ed25519PrivateKey.generate()
    elsewhere = make_event(
        OWNER,
        channel=crypto.channel_id(crypto.public_bytes(other_root)),
        after=ChainHead(),
        body=b"x",
        now=NOW,
    )
    junk = crypto.signed(OWNER, crypto.Label.EVENT, b"\xc1not an event")
    f = follower()
    out = feed(f, A, [elsewhere], head=2) + f.event(B, junk)
    assert findings(out) == [(A, FindingCode.CHANNEL_MISMATCH), (B, FindingCode.BAD_EVENT)]


def test_memory_is_bounded_by_the_window() -> None:
    events = chain(50)
    f = follower((A,), window=10, max_pending=5)
    feed(f, A, events, head=50)
    assert f.delivered_seq == 50 and len(f._delivered) == 10
    g = follower((A,), window=10, max_pending=5, after_seq=0, after_id=bytes(32))
    feed(g, A, events[1:], head=50)  # event 1 never comes: everything waits, bounded
    assert sorted(g._pending) == [2, 3, 4, 5, 6] and g.delivered_seq == 0


def test_a_fork_report_is_kept_whole_for_later_proof() -> None:
    base = chain(1)
    x = chain(1, after=head_of(base[0]), tag="/x")[0]
    y = chain(1, after=head_of(base[0]), tag="/y")[0]
    f = follower()
    out = feed(f, A, [base[0], x], head=2) + feed(f, B, [base[0], y], head=2)
    fork = next(o for o in out if isinstance(o, Finding))
    ids = {stored_event(s).id for s in fork.proof}
    assert ids == {stored_event(x).id, stored_event(y).id}
    assert all(stored_event(s).seq == 2 for s in fork.proof)


def test_a_removed_owner_cannot_take_the_channel_back_with_its_old_cert() -> None:
    both = verify_profile(profile(version=1, owners=(OWNER, OWNER2)))
    f = follower(prof=both)
    out = f.profile_seen(A, profile(version=2, owners=(OWNER,), at=NOW + 10))  # OWNER2 removed
    assert isinstance(out[0], ProfileAdopted)
    rogue = profile(version=3, owners=(OWNER, OWNER2), signer=OWNER2, at=NOW + 20)  # its cert is old
    assert findings(f.profile_seen(B, rogue)) == [(B, FindingCode.UNAUTHORISED_OWNER)]
    assert f.profile.profile.version == 2
    # taken back by the owners: a cert issued after version 2, and then it may sign again
    back = profile(version=3, certs=[cert(OWNER), cert(OWNER2, at=NOW + 30)], at=NOW + 30)
    assert isinstance(f.profile_seen(A, back)[0], ProfileAdopted)
    later = profile(version=4, certs=[cert(OWNER), cert(OWNER2, at=NOW + 30)], signer=OWNER2, at=NOW + 40)
    assert isinstance(f.profile_seen(A, later)[0], ProfileAdopted)
    # an owner added since (by the root, after the member's version) signs the next one
    g = follower()
    added = profile(version=5, certs=[cert(OWNER), cert(OWNER2, at=NOW + 5)], signer=OWNER2, at=NOW + 5)
    assert isinstance(g.profile_seen(A, added)[0], ProfileAdopted)


CHAIN = chain(8)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([A, B, C]), st.integers(0, 7)), max_size=40),
    st.lists(st.binary(max_size=200), max_size=3),
)
def test_any_delivery_order_shows_each_event_at_most_once_in_order_and_never_a_fork(
    sends: list[tuple[str, int]], junk: list[bytes]
) -> None:
    f = follower((A, B, C), after_seq=0, after_id=bytes(32))
    out: list[Output] = []
    for relay in (A, B, C):
        out += f.subscribed(relay, head_seq=8, first_seq=1, profile_version=1)
    for relay, index in sends:
        out += f.event(relay, CHAIN[index])
    for body in junk:
        out += f.event(A, Signed(body=body, signer=crypto.public_bytes(OWNER), sig=bytes(64)))
    out += f.finish(NOW)
    shown = accepted(out)
    assert shown == list(range(1, len(shown) + 1))  # once each, in order, from the start
    assert {code for _, code in findings(out)} <= {
        FindingCode.OUT_OF_ORDER,
        FindingCode.EVENT_GAP,
        FindingCode.RELAY_BEHIND,
        FindingCode.BAD_SIGNATURE,
        FindingCode.BAD_EVENT,
    }


def test_events_past_every_relays_retention_are_skipped_with_a_notice_not_a_lie() -> None:
    events = chain(6)
    f = follower((A, B), after_seq=1, after_id=head_of(events[0]).id)
    out = f.subscribed(A, head_seq=6, first_seq=4, profile_version=1)
    out += f.subscribed(B, head_seq=6, first_seq=5, profile_version=1)
    for signed in events[3:]:
        out += f.event(A, signed)
    assert accepted(out) == [4, 5, 6]
    assert findings(out) == [(A, FindingCode.HISTORY_PRUNED)]
    assert not next(o for o in out if isinstance(o, Finding)).is_lie
    # one relay still keeps them: no skipping, the missing events are a gap
    g = follower((A, B), after_seq=1, after_id=head_of(events[0]).id)
    g.subscribed(A, head_seq=6, first_seq=4, profile_version=1)
    g.subscribed(B, head_seq=6, first_seq=1, profile_version=1)
    assert accepted([o for e in events[3:] for o in g.event(A, e)]) == []


def test_a_relay_reconnected_after_a_drop_is_judged_from_where_the_member_is() -> None:
    events = chain(5)
    f = follower((A,), after_seq=0, after_id=bytes(32))
    out = feed(f, A, events[:3], head=3)
    assert f.resubscribe(A) == 3
    out += f.subscribed(A, head_seq=5, first_seq=1, profile_version=1)
    for signed in events[3:]:
        out += f.event(A, signed)
    assert accepted(out) == [1, 2, 3, 4, 5] and findings(out) == []
    # a stream that then starts past the last event shown is a gap, as on a first subscribe
    g = follower((A,), after_seq=0, after_id=bytes(32))
    feed(g, A, events[:2], head=2)
    g.resubscribe(A)
    g.subscribed(A, head_seq=5, first_seq=1, profile_version=1)
    assert findings(g.event(A, events[3])) == [(A, FindingCode.EVENT_GAP)]
