"""The held-memory benchmark still runs end to end (a few sessions; no figure asserted beyond its
shape): ``python -m benchmarks.held_memory`` measures the relay's RSS during and after clients
that hold partly sent messages (see benchmarks/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_held_memory_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "held.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.held_memory", "--sessions", "30", "--sources", "3",
         "--hold", "1.5", "--after", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["rss_before"] > 0
    (round_,) = figures["rounds"]
    # 30 messages of 255 KiB fit the default budget: every session holds its message (the gauge
    # is set about once a second: the hold is longer)
    assert round_["holding_at_end_of_hold"] == 30 and round_["refused_at_connect"] == 0
    assert round_["buffered_bytes_peak"] >= 30 * 255 * 1024
    assert round_["buffered_bytes_after"] == 0
