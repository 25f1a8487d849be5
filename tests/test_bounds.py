"""Source keys (per-IP budgets) and the one reporter of bounds hit."""

from __future__ import annotations

import pytest
import structlog

from relay.server.bounds import Bounds
from relay.server.metrics import Metrics
from relay.server.sources import UNKNOWN, source_key


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),  # same /64: one budget
        ("::ffff:10.0.0.1", "10.0.0.1"),  # IPv4 mapped into IPv6 is the IPv4 host
        ("fe80::1%eth0", "fe80::/64"),
        ("not an address", UNKNOWN),
    ],
)
def test_source_keys(address: str, key: str) -> None:
    assert source_key(address) == key


def test_another_ipv6_prefix_length() -> None:
    assert source_key("2001:db8:1:2:3:4:5:6", ipv6_prefix=48) == "2001:db8:1::/48"


def test_every_hit_is_counted_and_the_log_is_rate_limited() -> None:
    now = [0.0]
    metrics = Metrics()
    bounds = Bounds(metrics, clock=lambda: now[0], interval=10.0)
    with structlog.testing.capture_logs() as logs:
        bounds.hit("max_connections_per_ip", 4)
        bounds.hit("max_connections_per_ip", 4)
        bounds.hit("max_connections_per_ip", 4, count=3)
        bounds.hit("other", 1)
        now[0] = 10.0
        bounds.hit("max_connections_per_ip", 4)
    assert metrics.get("relay_bounds_hit_total", bound="max_connections_per_ip") == 6
    assert [(e["bound"], e["hits"]) for e in logs] == [
        ("max_connections_per_ip", 1),
        ("other", 1),
        ("max_connections_per_ip", 5),  # the four not logged, and this one
    ]
    assert all(e["event"] == "bound.hit" and e["log_level"] == "warning" for e in logs)


def test_hits_inside_a_transaction_are_reported_at_the_next_flush() -> None:
    import threading

    metrics = Metrics()
    bounds = Bounds(metrics)
    thread = threading.Thread(target=lambda: bounds.hit_from_thread("refused_per_group", 5, 3, group=7))
    thread.start()
    thread.join()
    assert metrics.get("relay_bounds_hit_total", bound="refused_per_group") == 0  # not yet
    with structlog.testing.capture_logs() as logs:
        bounds.flush()
        bounds.flush()  # once only
    assert metrics.get("relay_bounds_hit_total", bound="refused_per_group") == 3
    assert [(e["bound"], e["hits"], e["group"]) for e in logs] == [("refused_per_group", 3, 7)]
