"""What a hostile invitation costs the relay to refuse: ``verify_invitation``, timed per case.

The relay opens a sealed invitation and calls ``relay.protocol.invitation.verify_invitation``
on it (with ``max_owners`` from its policy, default 16) before anything else.  Before protocol
version 2 every signature was checked first: a profile carrying 256 copies of one owner cert
passed (one distinct owner) and cost the relay 258 signature checks, about 100 times a normal
invitation.  Now the cheap checks (binding, session, freshness, the cert count, duplicates,
the chain's structure) come first.  This times, in one process, each case against a normal
invitation, rounds alternating so that a slow moment of the host hits every case:

- normal invitations (1 owner; 16 owners, the policy's maximum), accepted;
- 256 copies of one validly signed cert: refused ``too_many_owners`` (the policy's 16), and
  ``duplicate_owner`` with the cap at the wire limit of 256;
- a normal invitation captured and replayed on another connection: ``wrong_session``;
- for comparison, the same 256 copies checked in the old order (every signature first, as
  before version 2: a copy of that code, kept here for this row only).

    .venv/bin/python -m benchmarks.cheap_checks            # a few seconds
    .venv/bin/python -m benchmarks.cheap_checks --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from benchmarks.runs import run_header
from relay.protocol import crypto
from relay.protocol.encoding import decode, encode
from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.invitation import check_fresh, make_invitation, verify_invitation
from relay.protocol.messages import Invitation, OwnerCert, Profile, Signed
from relay.protocol.profile import MAX_SIGNED_BODY, ProfilePolicy

NOW = 1_700_000_000
MAX_OWNERS = ProfilePolicy().max_owners  # the relay's default policy
RELAY = ed25519.Ed25519PrivateKey.generate()
FINGERPRINT = crypto.fingerprint(crypto.public_bytes(RELAY))
SESSION = bytes([0x42]) * 32  # the challenge of the connection the invitations are sent on


def _cert(root: ed25519.Ed25519PrivateKey, channel: bytes, owner: ed25519.Ed25519PrivateKey) -> Signed:
    body = encode(OwnerCert(channel=channel, owner_key=crypto.public_bytes(owner), issued_at=NOW))
    return crypto.signed(root, crypto.Label.OWNER_CERT, body)


def invitation(owners: int, *, copies: int = 0) -> bytes:
    """An invitation's opened plaintext: ``owners`` distinct owner certs, or ``copies`` copies of
    one cert; every signature valid."""
    root = ed25519.Ed25519PrivateKey.generate()
    channel = crypto.channel_id(crypto.public_bytes(root))
    keys = [ed25519.Ed25519PrivateKey.generate() for _ in range(max(owners, 1))]
    certs = (
        [_cert(root, channel, k) for k in keys] if not copies else [_cert(root, channel, keys[0])] * copies
    )
    profile = Profile(
        channel=channel,
        root_key=crypto.public_bytes(root),
        version=1,
        kind="channel",
        name="Benchmark channel",
        description="What a hostile invitation costs",
        owners=certs,
        relays=[],
        updated_at=NOW,
    )
    signed = crypto.signed(keys[0], crypto.Label.PROFILE, encode(profile))
    return make_invitation(
        owner_key=keys[0],
        relay_fingerprint=FINGERPRINT,
        service_group=bytes(16),
        profile=signed,
        channel=channel,
        session=SESSION,
        now=NOW,
    )


def old_order(plaintext: bytes, max_owners: int) -> None:
    """``verify_invitation`` as it was before version 2, for the comparison row: every
    signature checked before what it signs is looked at; the policy's owner cap afterwards."""
    signed = decode(plaintext, Signed, limit=MAX_SIGNED_BODY * 2)
    crypto.verify(signed.signer, crypto.Label.INVITATION, signed.body, signed.sig)
    invitation = decode(signed.body, Invitation, limit=MAX_SIGNED_BODY * 2)
    check_fresh(invitation.created_at, NOW, 600, "invitation")
    profile = decode(invitation.profile.body, Profile, limit=MAX_SIGNED_BODY)
    authorised: set[bytes] = set()
    for cert in profile.owners:
        crypto.verify(cert.signer, crypto.Label.OWNER_CERT, cert.body, cert.sig)
        authorised.add(decode(cert.body, OwnerCert, limit=MAX_SIGNED_BODY).owner_key)
    crypto.verify(
        invitation.profile.signer, crypto.Label.PROFILE, invitation.profile.body, invitation.profile.sig
    )
    if len(authorised) > max_owners:
        raise RemoteProtocolError(ErrorCode.TOO_MANY_OWNERS, "too many owners")


def verify(plaintext: bytes, *, session: bytes = SESSION, max_owners: int = MAX_OWNERS) -> str:
    """The relay's check; the outcome: "accepted" or the refusal's code."""
    try:
        verify_invitation(
            plaintext,
            relay_fingerprint=FINGERPRINT,
            session=session,
            now=NOW,
            max_age=600,
            max_owners=max_owners,
        )
    except RemoteProtocolError as exc:
        return exc.code.value
    return "accepted"


Case = tuple[str, Callable[[], str]]


def cases() -> list[Case]:
    one, sixteen, copies = invitation(1), invitation(MAX_OWNERS), invitation(1, copies=256)
    return [
        ("normal: 1 owner", lambda: verify(one)),
        (f"normal: {MAX_OWNERS} owners (the policy's maximum)", lambda: verify(sixteen)),
        (f"256 copies of one cert, max_owners {MAX_OWNERS}", lambda: verify(copies)),
        ("256 copies of one cert, max_owners 256 (wire limit)", lambda: verify(copies, max_owners=256)),
        ("1 owner, replayed on another connection", lambda: verify(one, session=bytes(32))),
        (
            "256 copies, the old order (before version 2)",
            lambda: (old_order(copies, MAX_OWNERS), "accepted")[1],
        ),
    ]


def measure(todo: list[Case], iterations: int, rounds: int) -> dict[str, tuple[str, list[float]]]:
    """Seconds per call, one figure per round and case, and each case's outcome."""
    out: dict[str, tuple[str, list[float]]] = {}
    for name, call in todo:
        out[name] = (call(), [])  # warm-up, and the outcome
    for _ in range(rounds):
        for name, call in todo:
            n = max(1, iterations // 50) if "old order" in name else iterations
            start = time.perf_counter()
            for _ in range(n):
                call()
            out[name][1].append((time.perf_counter() - start) / n)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cheap_checks", description=__doc__.split("\n")[0])
    p.add_argument("--iterations", type=int, default=500, help="calls per case and round (default 500)")
    p.add_argument("--rounds", type=int, default=5, help="rounds over every case (default 5)")
    p.add_argument("--quick", action="store_true", help="a smoke run (20 calls, 2 rounds)")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.iterations, args.rounds = 20, 2

    header = run_header()
    figures: dict[str, Any] = {**header, "iterations": args.iterations, "rounds": args.rounds, "cases": {}}
    results = measure(cases(), args.iterations, args.rounds)
    normal = statistics.median(next(iter(results.values()))[1])
    print(f"verify_invitation, {header['date']}, {header['machine']}, Python {header['python']}")
    print(f"{args.iterations} calls per case and round, {args.rounds} rounds; medians (range)\n")
    print("| invitation | outcome | us per check, median (range) | vs normal |")
    print("|---|---|---|---|")
    for name, (outcome, seconds) in results.items():
        median = statistics.median(seconds)
        spread = f"{min(seconds) * 1e6:.0f}-{max(seconds) * 1e6:.0f}"
        print(f"| {name} | {outcome} | {median * 1e6:.0f} ({spread}) | {median / normal:.2f} |")
        figures["cases"][name] = {"outcome": outcome, "seconds": seconds, "median": median}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
