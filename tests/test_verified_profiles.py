"""Stored profiles are verified once, off the database writer (issue 13, "cheap before expensive").

An owner command or a post asks whether its signer owns the group, from the profile the
relay stored.  Verifying that profile again per request let any owner spend the relay's
CPU, and doing it inside a transaction stalled the one writer thread every group needs.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from relayproc import RunningRelay
from test_flow import new_owner
from traffic import Poster, active_channel, group_session, metric

from relay.client import publish
from relay.client.owner import owner_command, read_log
from relay.protocol import crypto
from relay.protocol.encoding import encode
from relay.protocol.errors import ErrorCode, LocalProtocolError
from relay.server.bounds import Bounds
from relay.server.metrics import Metrics
from relay.server.profiles import VerifiedProfiles


def test_verify_is_refused_on_a_thread_that_forbids_it_and_only_while_inside() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    signed = crypto.signed(key, crypto.Label.EVENT, b"body")
    with crypto.verify_forbidden("a test"):
        with pytest.raises(LocalProtocolError) as caught:
            crypto.verify(signed.signer, crypto.Label.EVENT, signed.body, signed.sig)
        assert caught.value.code is ErrorCode.INTERNAL
        # other threads are not affected
        errors: list[BaseException] = []

        def elsewhere() -> None:
            try:
                crypto.verify(signed.signer, crypto.Label.EVENT, signed.body, signed.sig)
            except BaseException as exc:  # pragma: no cover - the assertion below shows it
                errors.append(exc)

        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
        assert errors == []
    crypto.verify(signed.signer, crypto.Label.EVENT, signed.body, signed.sig)  # allowed again


def _stored_profile(tmp_path: Path, name: str) -> tuple[bytes, bytes]:
    (tmp_path / name).mkdir()
    state, _ = new_owner(tmp_path / name, name=name)
    return encode(state.profile()), crypto.public_bytes(state.owner_key)


def test_a_stored_profile_is_verified_once_and_the_cache_is_bounded(tmp_path: Path) -> None:
    metrics = Metrics()
    profiles = VerifiedProfiles(64 * 1024, Bounds(metrics))
    first, owner = _stored_profile(tmp_path, "First")
    for _ in range(5):
        assert owner in profiles.of(first).owners
    assert metrics.get("relay_profile_verifications_total") == 1
    # Bounded by bytes: filling it evicts the least recently used, and says so.
    others = [_stored_profile(tmp_path, f"Other {n}")[0] for n in range(40)]
    for stored in others:
        profiles.of(stored)
    assert profiles.bytes <= 64 * 1024 and len(profiles) < 41
    assert metrics.get("relay_bounds_hit_total", bound="verified_profiles") >= 1
    profiles.of(first)  # evicted: verified again, not trusted blindly
    assert metrics.get("relay_profile_verifications_total") == 42
    kept, count = profiles.bytes, len(profiles)
    profiles.forget(first)  # replaced in the store: out now, not when the order reaches it
    assert profiles.bytes < kept and len(profiles) == count - 1
    profiles.forget(first)  # already gone: nothing happens
    profiles.of(first)
    assert metrics.get("relay_profile_verifications_total") == 43


async def test_a_replaced_profile_leaves_the_cache(relay: RunningRelay, tmp_path: Path) -> None:
    """An owner publishing version after version (issue 13's stalling owner sends hundreds a
    second) must not fill the cache with versions the relay no longer stores: memory that
    came back only when the least recently used order reached it."""
    owner, path, _ = await active_channel(relay, tmp_path)
    for _ in range(5):
        assert [r["state"] for r in (await publish(owner, path)).relays] == ["active"]
    assert metric(relay, "relay_verified_profiles") == 1  # the stored version only
    [view] = await owner_command(owner, "list_pending")  # and it is the one the relay uses
    assert view.error is None, view


async def test_owner_commands_and_posts_do_not_verify_the_profile_again(
    relay: RunningRelay, tmp_path: Path
) -> None:
    owner, _, address_id = await active_channel(relay, tmp_path)
    before = metric(relay, "relay_profile_verifications_total")
    for _ in range(10):
        [view] = await owner_command(owner, "list_pending")
        assert view.error is None, view
    assert await read_log(owner)
    poster = Poster(owner)
    async with group_session(relay, address_id) as session:
        for _ in range(10):
            await poster.post(session)
    # At most the one stored profile (the posts' view, if the cache had not seen it yet).
    assert metric(relay, "relay_profile_verifications_total") - before <= 1
