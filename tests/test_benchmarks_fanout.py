"""The fan-out benchmarks still run end to end (tiny counts; no speed asserted).

Speed is measured by ``python -m benchmarks.fanout``, never asserted in a test: this keeps the
command from rotting as the relay changes, and checks that every member got every post once,
in order, and that every post was acknowledged.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_fanout_benchmarks_quick_mode_runs_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "fanout.json"
    done = run(["benchmarks.fanout", "--quick", "--quiet-wait", "0", "--members", "20", "--publishers", "1,4",
                "--json", str(out)])  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["errors"] == 0
    for config in figures["fanout"]:
        assert config["setup"]["live"] == config["members"]
        for mode in ("max", "fixed"):
            run_ = config[mode]
            assert run_["deliveries"] == run_["expected_deliveries"] > 0
            assert run_["gaps"] == 0 and run_["members_closed"] == 0
    assert {config["server"] for config in figures["fanout"]} == {"relay", "baseline"}
    assert {config["server"] for config in figures["fanout"] if "stalled" in config} == {"relay", "baseline"}
    servers = [r for r in figures["ingest"] if r["server"] in ("relay", "baseline")]
    assert len(servers) == 4 and all(r["accepted"] == r["events"] > 0 for r in servers)
    assert {r["server"] for r in figures["ingest"]} >= {"sqlite", "sqlite-calls"}
