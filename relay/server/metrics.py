"""Process-wide counters, gauges and histograms, rendered as Prometheus text on the operator port.

Deliberately tiny: every metric is declared once in :data:`SPECS` (type, help,
buckets), so adding one is one line there plus the ``inc``/``set``/``observe``
call where it happens.  Series appear once they have a value.  All calls are
made from the trio thread (the database reports its commits there too), so no
locking is needed.  Nothing here blocks or does I/O.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

Labels = tuple[tuple[str, str], ...]

# Commit times: a fsync on a disk is around 0.1-10 ms; anything near a second is trouble.
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)  # the writer takes at most 512 jobs per commit


@dataclass(frozen=True)
class Spec:
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    buckets: tuple[float, ...] = ()


SPECS: dict[str, Spec] = {
    "relay_start_time_seconds": Spec("gauge", "Start time of the relay process, seconds since the epoch"),
    "relay_process_info": Spec("gauge", "Always 1: which process of the fleet this is (process id, pid)"),
    "relay_connections_open": Spec("gauge", "Public connections open now"),
    "relay_connections_total": Spec("counter", "Public connections accepted"),
    "relay_invitations_total": Spec("counter", "Invitations answered, by outcome"),
    "relay_refusals_total": Spec("counter", "Requests refused, by error code"),
    "relay_activations_total": Spec("counter", "Groups moved to active"),
    "relay_operator_actions_total": Spec("counter", "Operator actions on groups, by action"),
    "relay_admin_refused_total": Spec("counter", "Operator-port requests refused before routing, by reason"),
    "relay_bounds_hit_total": Spec("counter", "Times a bound was hit, by bound"),
    "relay_groups": Spec("gauge", "Groups by state"),
    "relay_db_commits_total": Spec("counter", "SQLite commits"),
    "relay_db_jobs_total": Spec("counter", "Jobs committed (several per commit with group commit)"),
    "relay_db_commit_seconds_total": Spec("counter", "Time spent in transactions"),
    "relay_store_unavailable_total": Spec(
        "counter", "Requests answered unavailable: the database took no writes (a full disk, say)"
    ),
    "relay_db_reads_total": Spec("counter", "Reads run beside the writer (listings, stats, heads)"),
    "relay_db_reads_in_flight": Spec("gauge", "Reads beside the writer running now, one per read connection"),
    "relay_db_reads_waiting": Spec("gauge", "Reads beside the writer waiting for a free read connection"),
    "relay_db_commit_seconds": Spec("histogram", "Duration of each database transaction", _SECONDS),
    "relay_db_batch_size": Spec("histogram", "Jobs per database commit (group commit)", _BATCH),
    "relay_join_requests_total": Spec(
        "counter", "Join requests answered at arrival, by outcome (duplicate: asked again)"
    ),
    "relay_admission_refusals_total": Spec("counter", "Join requests refused, by reason code"),
    "relay_owner_decisions_total": Spec("counter", "Owners' approvals and refusals of waiting members"),
    "relay_queue_decided_total": Spec("counter", "Held join requests the worker decided, by outcome"),
    "relay_queue_failures_total": Spec("counter", "Failed attempts to process a held join request"),
    "relay_queue_dead_letters_total": Spec("counter", "Join requests dead-lettered after max_attempts"),
    "relay_queue_expired_total": Spec(
        "counter", "Join requests refused for waiting longer than max_request_age"
    ),
    "relay_queue_turn_failures_total": Spec(
        "counter", "Worker transactions that failed as a whole (retried with back-off)"
    ),
    "relay_queue_held": Spec("gauge", "Join requests held now"),
    "relay_queue_pending_approval": Spec("gauge", "Join requests waiting for the owners now"),
    "relay_queue_dead": Spec("gauge", "Dead-lettered join requests now"),
    "relay_members": Spec("gauge", "Admitted members, over all groups"),
    "relay_events_total": Spec("counter", "Owner events answered, by outcome (stored, duplicate)"),
    "relay_events_delivered_total": Spec("counter", "Event frames queued to live member feeds"),
    "relay_events_pruned_total": Spec("counter", "Events dropped by retention, by reason (size, age)"),
    "relay_equivocations_total": Spec(
        "counter", "Posts refused as equivocation (a different event at a taken seq)"
    ),
    "relay_profile_verifications_total": Spec(
        "counter", "Stored profiles verified (each once, then kept: relay.server.profiles)"
    ),
    "relay_verified_profiles": Spec("gauge", "Stored profiles kept verified in memory now"),
    "relay_verified_profiles_bytes": Spec(
        "gauge", "Estimated bytes of the verified profiles kept (bound: storage.verified_profiles_bytes)"
    ),
    "relay_subscribers": Spec("gauge", "Subscribed member connections now"),
    "relay_events_stored": Spec("gauge", "Owner events kept, over all groups"),
    "relay_events_stored_bytes": Spec("gauge", "Bytes of owner events kept, over all groups"),
    "relay_timeline_places": Spec(
        "gauge", "Timeline places kept (member certs, messages, moderations), all groups"
    ),
    "relay_timeline_bytes": Spec("gauge", "Bytes of signed timeline entries kept, over all groups"),
    "relay_equivocations": Spec("gauge", "Equivocation proofs kept (two events at one sequence number)"),
    "relay_direct_inbox": Spec("gauge", "Direct invitations waiting for members who are not subscribed"),
    "relay_subscriptions_total": Spec("counter", "Subscriptions accepted"),
    "relay_feed_lagging_total": Spec("counter", "Member feeds dropped back to catch-up (send buffer full)"),
    "relay_feed_stalled_total": Spec(
        "counter", "Member connections closed for accepting nothing (stall_timeout)"
    ),
    "relay_feeds_ended_total": Spec(
        "counter", "Member feeds ended because their group stopped being active (suspended, removed)"
    ),
    "relay_member_messages_total": Spec(
        "counter", "Member messages answered, by result (stored, duplicate, refused)"
    ),
    "relay_timeline_published_total": Spec(
        "counter", "Certs and moderations published to timelines, by kind and result"
    ),
    "relay_timeline_delivered_total": Spec("counter", "Timeline frames queued to live member feeds"),
    "relay_timeline_pruned_total": Spec(
        "counter", "Timeline places dropped by retention, by reason (size, age)"
    ),
    "relay_moderations_total": Spec("counter", "Moderations placed, by action"),
    "relay_member_feeds_ended_total": Spec(
        "counter", "Member feeds ended because the member was removed or banned, by code"
    ),
    "relay_discovered_total": Spec("counter", "Signed heads answered to discover requests"),
    "relay_direct_invitations_total": Spec(
        "counter", "Direct invitations passed on, by outcome (delivered, stored)"
    ),
    "relay_direct_refusals_total": Spec("counter", "Direct invitations and member cards refused, by code"),
    "relay_direct_expired_total": Spec("counter", "Direct invitations dropped from an inbox after inbox_ttl"),
    "relay_sources": Spec("gauge", "Entries of the per-source budget table (sources connected or refilling)"),
    "relay_buffered_bytes": Spec(
        "gauge", "Bytes held in partly received WebSocket messages, all connections"
    ),
    "relay_pings_total": Spec("counter", "WebSocket pings sent to silent subscribed sessions"),
    "relay_ping_timeouts_total": Spec(
        "counter", "Subscribed sessions closed for not answering a ping within pong_timeout"
    ),
}


@dataclass
class _Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; last is +Inf
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)
        # le is inclusive: a value equal to a bound falls in that bucket
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1


class Metrics:
    def __init__(self) -> None:
        self.values: dict[str, dict[Labels, float]] = defaultdict(dict)
        self.histograms: dict[str, dict[Labels, _Histogram]] = defaultdict(dict)

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = _key(labels)
        series = self.values[name]
        series[key] = series.get(key, 0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        self.values[name][_key(labels)] = value

    def get(self, name: str, **labels: str) -> float:
        return self.values.get(name, {}).get(_key(labels), 0)

    def observe(self, name: str, value: float, **labels: str) -> None:
        """One observation of a histogram declared in :data:`SPECS`."""
        series = self.histograms[name]
        key = _key(labels)
        if key not in series:
            series[key] = _Histogram(SPECS[name].buckets)
        series[key].observe(value)

    def render(self) -> str:
        lines: list[str] = []
        for name in sorted({*self.values, *self.histograms}):
            spec = SPECS.get(name, Spec("gauge", name))
            lines.append(f"# HELP {name} {spec.help}")
            lines.append(f"# TYPE {name} {spec.kind}")
            for labels, value in sorted(self.values.get(name, {}).items()):
                lines.append(f"{name}{_text(labels)} {_number(value)}")
            for labels, hist in sorted(self.histograms.get(name, {}).items()):
                cumulative = 0
                for bound, count in zip((*hist.buckets, float("inf")), hist.counts, strict=True):
                    cumulative += count
                    le = "+Inf" if bound == float("inf") else f"{bound:g}"
                    lines.append(f"{name}_bucket{_text((*labels, ('le', le)))} {cumulative}")
                lines.append(f"{name}_sum{_text(labels)} {_number(hist.total)}")
                lines.append(f"{name}_count{_text(labels)} {hist.count}")
        return "\n".join(lines) + "\n"


def _key(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def _number(value: float) -> str:
    # repr keeps every digit (a start time in seconds needs 10 of them); integers stay integers
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _text(labels: Labels) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else ""
