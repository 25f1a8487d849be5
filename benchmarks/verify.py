"""Ed25519 signature checks: the relay's ``crypto.verify`` against OpenSSL's, in one process.

A join costs the relay one signature check, and it was most of the relay's CPU per join
(``benchmarks/README.md``): this measures the check alone.  The baseline is OpenSSL's Ed25519
through ``cryptography``, which the relay used before, against ``relay.protocol.crypto.verify``
(libsodium through PyNaCl, with the length checks and the label prefix).  Each signature is by a
distinct key over a join-request-sized body, as at the relay, where nearly every join comes
from a new member key.  Rounds alternate between the two so that a slow moment of the host hits
both; the table shows medians.

    .venv/bin/python -m benchmarks.verify            # about 10 seconds
    .venv/bin/python -m benchmarks.verify --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from benchmarks.runs import run_header
from relay.protocol import crypto

BODY_BYTES = 240  # about a join request's signed body

Signature = tuple[bytes, bytes, bytes]  # public key, body, signature over the labelled body


def make_signatures(n: int) -> list[Signature]:
    out = []
    for _ in range(n):
        key = ed25519.Ed25519PrivateKey.generate()
        body = os.urandom(BODY_BYTES)
        out.append((crypto.public_bytes(key), body, crypto.sign(key, crypto.Label.JOIN_REQUEST, body)))
    return out


def openssl(sigs: list[Signature]) -> None:
    for key, body, sig in sigs:
        message = crypto.signing_input(crypto.Label.JOIN_REQUEST, body)
        ed25519.Ed25519PublicKey.from_public_bytes(key).verify(sig, message)


def relay_verify(sigs: list[Signature]) -> None:
    for key, body, sig in sigs:
        crypto.verify(key, crypto.Label.JOIN_REQUEST, body, sig)


CHECKS: dict[str, Callable[[list[Signature]], None]] = {
    "OpenSSL, via cryptography (baseline)": openssl,
    "relay.protocol.crypto.verify": relay_verify,
}


def measure(sigs: list[Signature], rounds: int) -> dict[str, list[float]]:
    """Seconds per check, one figure per round and check; every check passes or this raises."""
    per_check: dict[str, list[float]] = {name: [] for name in CHECKS}
    for check in CHECKS.values():
        check(sigs[: min(200, len(sigs))])  # warm-up
    for _ in range(rounds):
        for name, check in CHECKS.items():
            start = time.perf_counter()
            check(sigs)
            per_check[name].append((time.perf_counter() - start) / len(sigs))
    return per_check


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.verify", description=__doc__.split("\n")[0])
    p.add_argument("--signatures", type=int, default=5000, help="distinct keys and signatures (default 5000)")
    p.add_argument("--rounds", type=int, default=5, help="rounds over all of them per check (default 5)")
    p.add_argument("--quick", action="store_true", help="a smoke run (200 signatures, 2 rounds)")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.signatures, args.rounds = 200, 2

    header = run_header()
    sigs = make_signatures(args.signatures)
    per_check = measure(sigs, args.rounds)
    baseline = statistics.median(per_check[next(iter(CHECKS))])
    print(f"Ed25519 signature checks, {header['date']}, {header['machine']}, Python {header['python']}")
    print(f"{args.signatures} signatures by distinct keys, {BODY_BYTES}-byte bodies, {args.rounds} rounds\n")
    print("| check | us per signature, median (range) | checks/s, one core | vs baseline |")
    print("|---|---|---|---|")
    figures: dict[str, Any] = {**header, "signatures": args.signatures, "rounds": args.rounds, "checks": {}}
    for name, seconds in per_check.items():
        median = statistics.median(seconds)
        spread = f"{min(seconds) * 1e6:.1f}-{max(seconds) * 1e6:.1f}"
        print(f"| {name} | {median * 1e6:.1f} ({spread}) | {1 / median:,.0f} | {median / baseline:.2f} |")
        figures["checks"][name] = {"seconds": seconds, "median": median, "vs_baseline": median / baseline}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
