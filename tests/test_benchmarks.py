"""The benchmark command still runs end to end (tiny counts; no figure is checked here).

Speed is measured by ``python -m benchmarks``, never asserted in a test: this only keeps the
command from rotting as the relay changes.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_benchmark_command_runs(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--processes", "1", "--invitations", "100",
         "--round-trips", "100", "--groups", "200", "--prefill", "500", "--quiet-wait", "0",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "invitations/s" in done.stdout and "WebSocket echo (baseline)" in done.stdout
    figures = json.loads(out.read_text())
    runs = {run["load"]: run for run in figures["throughput"]}
    assert (runs["invite"]["ok"], runs["invite"]["errors"]) == (100, 0)
    assert (runs["echo"]["ok"], runs["echo"]["errors"]) == (100, 0)
    assert figures["comparison"][0]["invitations_per_s"] > 0


def test_signature_check_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "verify.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.verify", "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    checks = json.loads(out.read_text())["checks"]
    assert set(checks) == {"OpenSSL, via cryptography (baseline)", "relay.protocol.crypto.verify"}
    assert all(len(c["seconds"]) == 2 and c["median"] > 0 for c in checks.values())


def test_cheap_checks_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "cheap.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.cheap_checks", "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cases = json.loads(out.read_text())["cases"]
    outcomes = [c["outcome"] for c in cases.values()]
    assert outcomes == [
        "accepted",
        "accepted",
        "too_many_owners",
        "duplicate_owner",
        "wrong_session",
        "accepted",
    ]
    assert all(len(c["seconds"]) == 2 and c["median"] > 0 for c in cases.values())


def test_abuse_benchmark_runs_every_attack(tmp_path: Path) -> None:
    """``python -m benchmarks.abuse --quick``: every attack class runs against its own relay
    and gets a row, with the well-behaved client's figures beside it.  Exit status 1 means a
    well-behaved request failed: a figure of the run (reported), not a crash."""
    out = tmp_path / "abuse.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.abuse", "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    attacks = ["liar", "owners", "webpage", "starve", "fill", "memory", "replay", "heads"]
    assert [row["attack"] for row in figures["attacks"]] == attacks
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    for row in figures["attacks"]:
        assert any(line.startswith(f"| {row['title']} |") for line in rows), done.stdout[-3000:]
        for phase in ("idle", "during"):
            assert row["well_behaved"][phase]["requests"] > 0
        assert row["attacker"]["seconds"] > 0 and row["relay"]["rss_before"] > 0
    assert (done.returncode == 1) == (figures["failures"] > 0)


def test_fleet_benchmark_runs(tmp_path: Path) -> None:
    """SQLite, PostgreSQL, PostgreSQL with two processes: every join admitted, every event
    accepted, every member got every post; rows that need the fleet's cross-process delivery
    say so when it is missing."""
    sys.path.insert(0, str(ROOT / "tests"))
    from pgserver import find_bindir

    if find_bindir() is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): install Debian's postgresql package")
    needs_fleet = "needs the fleet lane"  # benchmarks.fleet.NEEDS_FLEET
    fleet_delivery = importlib.util.find_spec("relay.server.fleet") is not None

    out = tmp_path / "fleet.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.fleet", "--quick", "--quiet-wait", "0", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "deliveries per server CPU-second" in done.stdout and "aim >= 0.7" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["errors"] == 0
    configs = figures["configurations"]
    assert set(configs) == {"sqlite-1", "pg-1", "pg-2"}
    for name, config in configs.items():
        assert config["joins"]["admitted"] == config["joins"]["requests"] > 0, name
        assert config["events"]["accepted"] == config["events"]["events"] > 0, name
        assert len(config["events"]["cores_by_process"]) == config["processes"]
        fanout = config["fanout"]
        if name == "pg-2" and not fleet_delivery:
            assert fanout == needs_fleet
            assert f"p99 across processes: {needs_fleet}" in done.stdout
        else:
            assert fanout["deliveries"] == fanout["expected_deliveries"] > 0, name
            assert fanout["gaps"] == 0


def test_fleet_benchmark_runs_the_loads_and_configurations_asked_for(tmp_path: Path) -> None:
    """``--only`` and ``--engines`` narrow the run (the writer's paths, measured alone); what
    was left out reads "not run", and a name it does not know ends the run."""
    sys.path.insert(0, str(ROOT / "tests"))
    from pgserver import find_bindir

    if find_bindir() is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): install Debian's postgresql package")
    out = tmp_path / "fleet.json"
    command = [sys.executable, "-m", "benchmarks.fleet", "--quick", "--quiet-wait", "0"]
    done = subprocess.run(
        [*command, "--only", "events", "--engines", "pg-1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    configs = json.loads(out.read_text())["configurations"]
    assert list(configs) == ["pg-1"]
    assert set(configs["pg-1"]) == {"name", "processes", "events"}
    assert configs["pg-1"]["events"]["accepted"] == configs["pg-1"]["events"]["events"] > 0
    assert "not run" in done.stdout
    wrong = subprocess.run(
        [*command, "--only", "posts"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert wrong.returncode != 0 and "--only: choose among fanout, joins, events" in wrong.stderr
