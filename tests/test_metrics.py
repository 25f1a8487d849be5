"""``GET /metrics`` of the real daemon, parsed as Prometheus text after some traffic."""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from pathlib import Path

import httpx
import trio
from relayproc import RelayFactory

from relay.client import add_relay, create_channel, publish
from relay.protocol.encoding import b64e
from relay.server.metrics import SPECS, Metrics

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def parse(text: str) -> tuple[dict[str, tuple[str, str]], dict[str, list[tuple[dict[str, str], float]]]]:
    """Families (name -> (type, help)) and samples (name -> [(labels, value)]); strict."""
    families: dict[str, tuple[str, str]] = {}
    helps: dict[str, str] = {}
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            assert help_ and name not in helps, line
            helps[name] = help_
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name in helps, f"TYPE before HELP: {line}"
            assert kind in ("counter", "gauge", "histogram"), line
            families[name] = (kind, helps[name])
        else:
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name, labels_text, value = match.groups()
            family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in families else name
            assert family in families, f"sample without HELP/TYPE: {line}"
            labels = dict(re.findall(r'(\w+)="([^"]*)"', labels_text or ""))
            samples[name].append((labels, float(value)))
    return families, samples


def check_histogram(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    buckets = samples[f"{name}_bucket"]
    bounds = [math.inf if labels["le"] == "+Inf" else float(labels["le"]) for labels, _ in buckets]
    counts = [value for _, value in buckets]
    assert bounds == sorted(bounds) and bounds[-1] == math.inf, bounds
    assert counts == sorted(counts), f"{name} buckets are not cumulative: {counts}"
    (_, count), (_, total) = samples[f"{name}_count"][0], samples[f"{name}_sum"][0]
    assert counts[-1] == count > 0 and total >= 0
    return count


async def test_metrics_after_traffic(relay_factory: RelayFactory, tmp_path: Path) -> None:
    relay = relay_factory(policy={"deny_patterns": ["spam"]}, storage={"max_closed_groups": 1})

    async def invite(name: str) -> None:
        state = create_channel(name)
        path = tmp_path / f"{b64e(state.channel)[:8]}.json"
        state.save(path)
        await add_relay(state, path, relay.address)
        if "spam" not in name:
            await publish(state, path)

    async with trio.open_nursery() as nursery:  # concurrent, so some commits carry several jobs
        for n in range(6):
            nursery.start_soon(invite, f"channel {n}")
    await invite("spam 1")
    await invite("spam 2")  # the second refusal overflows max_closed_groups = 1

    families, samples = parse(httpx.get(f"{relay.admin_url}/metrics").text)
    for name in ("relay_db_commit_seconds", "relay_db_batch_size"):
        assert families[name][0] == "histogram"
    assert check_histogram(samples, "relay_db_commit_seconds") == samples["relay_db_commits_total"][0][1]
    assert check_histogram(samples, "relay_db_batch_size") == samples["relay_db_commits_total"][0][1]
    batch_sum = samples["relay_db_batch_size_sum"][0][1]
    assert batch_sum == samples["relay_db_jobs_total"][0][1]

    def value(name: str, **labels: str) -> float:
        return next(v for got, v in samples[name] if got == labels)

    assert value("relay_groups", state="active") == 6
    assert value("relay_groups", state="rejected") == 1
    assert value("relay_connections_total") >= 8 and value("relay_connections_open") == 0
    assert value("relay_invitations_total", outcome="refused") == 2
    assert value("relay_bounds_hit_total", bound="max_closed_groups") == 1
    assert value("relay_bounds_hit_total", bound="db_pending_jobs") == 0
    assert value("relay_activations_total") == 6
    assert time.time() - 60 < value("relay_start_time_seconds") <= time.time()


def test_histogram_buckets_are_inclusive_and_cumulative() -> None:
    metrics = Metrics()
    for jobs in (1, 1, 2, 3, 600):
        metrics.observe("relay_db_batch_size", jobs)
    _, samples = parse(metrics.render())
    buckets = {labels["le"]: v for labels, v in samples["relay_db_batch_size_bucket"]}
    assert (buckets["1"], buckets["2"], buckets["4"], buckets["512"], buckets["+Inf"]) == (2, 3, 4, 4, 5)
    assert samples["relay_db_batch_size_sum"][0][1] == 607


def test_the_operations_guide_describes_every_metric() -> None:
    guide = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    assert [name for name in SPECS if f"| `{name}` |" not in guide] == []
