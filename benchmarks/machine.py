"""What the machine did meanwhile: all cores from ``/proc/stat``, other processes from psutil.

The benchmark shares the machine with whatever else runs on it (a test suite, another
benchmark).  Two figures make that visible in the table instead of silently lowering a rate:

- *machine busy*: cores busy on average over a timed section, all processes together, from
  the kernel's tick counters (``/proc/stat``).  Near 2.0 on a 2-core machine means the cores
  themselves were the limit.
- *other processes*: CPU time that processes other than the benchmark's own used meanwhile
  (psutil, every process on the machine, children reaped meanwhile included).

The two use different clocks: on a virtual machine whose cores share a host core, a process
accounts less CPU time than the ticks ``/proc/stat`` counts while both cores are busy, so the
busy figure can exceed the sum of the per-process figures without any other process running.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class CpuSample:
    busy: float  # seconds of CPU time spent by anything, all cores
    others: float  # CPU seconds of every process not excluded
    at: float  # monotonic seconds


def _proc_stat_busy() -> float:
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    # user nice system idle iowait irq softirq steal: busy = all but idle and iowait
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICKS


def _others(exclude: set[int]) -> float:
    total = 0.0
    for proc in psutil.process_iter():
        if proc.pid in exclude:
            continue
        try:
            t = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def sample(exclude: Iterable[int] = ()) -> CpuSample:
    """Now; ``exclude`` are the benchmark's own processes (this one is always excluded)."""
    mine = {os.getpid(), *exclude}
    return CpuSample(_proc_stat_busy(), _others(mine), time.monotonic())


@dataclass
class Usage:
    busy: float  # cores
    others: float  # cores

    @classmethod
    def between(cls, before: CpuSample, after: CpuSample) -> Usage:
        elapsed = after.at - before.at
        if elapsed <= 0:
            return cls(0.0, 0.0)
        return cls((after.busy - before.busy) / elapsed, max(0.0, after.others - before.others) / elapsed)


def wait_quiet(max_wait: float, threshold: float = 0.15, window: float = 1.0) -> float:
    """Wait (up to ``max_wait`` s) until the machine was under ``threshold`` cores busy for a window.

    Returns the busy cores of the last window.
    """
    deadline = time.monotonic() + max_wait
    while True:
        before = _proc_stat_busy()
        time.sleep(window)
        busy = (_proc_stat_busy() - before) / window
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def description() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{os.cpu_count()} cores{', ' + cpu if cpu else ''}, {platform.system()} {platform.release()}"


_SPIN = (
    "import time\n"
    "t0, c0 = time.monotonic(), time.process_time()\n"
    "while time.monotonic() < t0 + {seconds}: pass\n"
    "print((time.process_time() - c0) / (time.monotonic() - t0))\n"
)


def parallel_capacity(seconds: float = 1.0) -> float:
    """Cores this machine really gives two CPU-bound processes at once, right now.

    Two processes spin for ``seconds``; each one's accounted CPU time divided by its wall time,
    summed.  2.0 on an idle 2-core machine; less when another process, or on a virtual machine
    the host, takes a share.
    """
    import subprocess
    import sys

    code = _SPIN.format(seconds=seconds)
    started = time.monotonic()
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    total = sum(float(p.communicate()[0] or 0) for p in procs)
    return total / max(seconds, time.monotonic() - started - 0.05)
