"""The group benchmark still runs end to end (tiny counts; no speed asserted).

Speed is measured by ``python -m benchmarks.groups``, never asserted in a test: this keeps the
command from rotting as the relay changes, and checks that every member got every message of
both traffics (member messages in a group, owner posts in a channel) and that every member
message was stored.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_group_benchmark_quick_mode_runs_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "groups.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.groups", "--quick", "--quiet-wait", "0", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["errors"] == 0
    assert [r["kind"] for r in figures["results"]] == ["channel", "group"]
    for config in figures["results"]:
        assert config["setup"]["live"] == config["members"]
        fixed = config["fixed"]
        assert fixed["deliveries"] == fixed["expected_deliveries"] > 0
        assert fixed["members_closed"] == 0
    group = figures["results"][1]
    assert group["posters"] == 5 and group["acked"] >= group["fixed"]["messages"]
    assert "cost_ratio" in figures and "a member message costs the relay" in done.stdout
