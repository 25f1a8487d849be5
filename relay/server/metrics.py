"""Process-wide counters and gauges, rendered as Prometheus text on the operator port.

Deliberately tiny: named counters with optional labels, incremented in place.
Nothing here blocks or does I/O.
"""

from __future__ import annotations

from collections import defaultdict

_HELP: dict[str, str] = {
    "relay_connections_open": "Public connections open now",
    "relay_connections_total": "Public connections accepted",
    "relay_invitations_total": "Invitations answered, by outcome",
    "relay_refusals_total": "Requests refused, by error code",
    "relay_activations_total": "Groups moved to active",
    "relay_bounds_hit_total": "Times a bound was hit, by bound",
    "relay_db_commits_total": "SQLite commits",
    "relay_db_jobs_total": "Jobs committed (several per commit with group commit)",
    "relay_db_commit_seconds_total": "Time spent in transactions",
    "relay_groups": "Groups by state",
    "relay_join_requests_total": "Join requests answered at arrival, by outcome (duplicate: asked again)",
    "relay_admission_refusals_total": "Join requests refused, by reason code",
    "relay_owner_decisions_total": "Owners' approvals and refusals of waiting members",
    "relay_queue_decided_total": "Held join requests the worker decided, by outcome",
    "relay_queue_failures_total": "Failed attempts to process a held join request",
    "relay_queue_dead_letters_total": "Join requests dead-lettered after max_attempts",
    "relay_queue_expired_total": "Join requests refused for waiting longer than max_request_age",
    "relay_queue_turn_failures_total": "Worker transactions that failed as a whole (retried with back-off)",
    "relay_queue_held": "Join requests held now",
    "relay_queue_pending_approval": "Join requests waiting for the owners now",
    "relay_queue_dead": "Dead-lettered join requests now",
    "relay_members": "Admitted members, over all groups",
}
_GAUGES = frozenset(
    {
        "relay_connections_open",
        "relay_groups",
        "relay_queue_held",
        "relay_queue_pending_approval",
        "relay_queue_dead",
        "relay_members",
    }
)


class Metrics:
    def __init__(self) -> None:
        self.values: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        series = self.values[name]
        series[key] = series.get(key, 0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        self.values[name][tuple(sorted(labels.items()))] = value

    def get(self, name: str, **labels: str) -> float:
        return self.values.get(name, {}).get(tuple(sorted(labels.items())), 0)

    def render(self) -> str:
        lines: list[str] = []
        for name in sorted(self.values):
            kind = "gauge" if name in _GAUGES else "counter"
            lines.append(f"# HELP {name} {_HELP.get(name, name)}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in sorted(self.values[name].items()):
                label_text = ",".join(f'{k}="{v}"' for k, v in labels)
                lines.append(f"{name}{{{label_text}}} {value:g}" if label_text else f"{name} {value:g}")
        return "\n".join(lines) + "\n"
