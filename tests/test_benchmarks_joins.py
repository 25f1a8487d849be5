"""The join benchmarks and the join soak still run end to end (tiny counts; no speed asserted).

Speed is measured by ``python -m benchmarks.joins``, never asserted in a test: this keeps the
commands from rotting as the relay changes, and checks that nothing failed on the way.
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


def test_join_benchmarks_quick_mode_runs_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "joins.json"
    done = run(
        ["benchmarks.joins", "--quick", "--quiet-wait", "0", "--requests", "500", "--flood", "500",
         "--held", "500", "--json", str(out)]
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["errors"] == 0
    assert figures["throughput"]["admitted"] == 500 and figures["throughput"]["rate"] > 0
    assert figures["fairness"]["rows_by_status"] == {"admitted": figures["fairness"]["members_final"]}
    assert figures["fairness"]["phases"]["idle"]["requests"] > 0
    restart = figures["restart"]["held"]
    assert restart["held_after_restart"] == [restart["held_before_kill"]]


def test_join_soak_finds_no_violation(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = run(["benchmarks.soak_joins", "--cycles", "1", "--seconds", "1", "--members", "16", "--seed", "7",
                "--json", str(out)])  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["violations"] == 0 and len(result["cycles"]) == 1
