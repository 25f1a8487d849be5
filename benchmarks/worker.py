"""A client process for multi-process loads: ``python -m benchmarks.worker SPEC_JSON``.

The spec names the operation (``invite`` or ``echo``), the target (contact address or echo
``host:port``), the number of concurrent tasks, the number of operations and a folder for owner
state files.  The worker prepares everything that is client-side only (channels), prints a
``worker.ready`` line, waits for ``go`` on stdin so that every worker starts together, runs the
load and prints one ``worker.done`` line with its :class:`benchmarks.load.LoadResult`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

from benchmarks.load import echo_op, invite_op, make_channels, run_load


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    count, tasks = int(spec["count"]), int(spec["tasks"])
    if spec["kind"] == "invite":
        channels = make_channels(count, Path(spec["states"]), prefix=str(spec.get("prefix", "w")))
        op = invite_op(channels, spec["target"])
    elif spec["kind"] == "echo":
        op = echo_op(spec["target"])
    else:
        print(json.dumps({"event": "worker.failed", "reason": f"unknown kind {spec['kind']!r}"}), flush=True)
        return 2
    print(json.dumps({"event": "worker.ready"}), flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    result = trio.run(run_load, op, count, tasks)
    print(json.dumps({"event": "worker.done", **result.to_json()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
