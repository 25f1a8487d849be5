"""The status line: what a command waits for, shown on a terminal once a wait lasts a second.

:class:`StatusLine` listens to :mod:`relay.client.progress` and, from a thread of its own,
redraws one line on stderr (a spinner, what is waited for, for how long) while the oldest
wait is older than :data:`SHOW_AFTER`; it erases the line when the waits end.  The command
line starts it only when stderr is a terminal and ``--json`` is not given, so scripts and
pipes never see it.  Anything else written to stderr must go through :func:`pause` first.
This module must not write to stdout.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

SHOW_AFTER = 1.0  # seconds a wait lasts before it is shown
FRAMES = "|/-\\"
TICK = 0.1


class StatusLine:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._waits: dict[int, tuple[str, float]] = {}
        self._tokens = itertools.count()
        self._lock = threading.Lock()
        self._shown = 0  # characters on the line now
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-line", daemon=True)
        self._frame = 0

    # --- relay.client.progress.Listener ---
    def begin(self, what: str) -> object:
        token = next(self._tokens)
        with self._lock:
            self._waits[token] = (what, time.monotonic())
        return token

    def end(self, token: object) -> None:
        with self._lock:
            self._waits.pop(token, None)  # type: ignore[call-overload]

    # --- drawing ---
    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(1.0)
        with self._lock:
            self._erase()

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            with self._lock:
                self._draw()

    def _draw(self) -> None:
        now = time.monotonic()
        shown = [(what, now - began) for what, began in self._waits.values() if now - began >= SHOW_AFTER]
        if not shown:
            self._erase()
            return
        what, age = max(shown, key=lambda wait: wait[1])
        more = f" and {len(shown) - 1} more" if len(shown) > 1 else ""
        self._frame = (self._frame + 1) % len(FRAMES)
        text = f"{FRAMES[self._frame]} waiting for {what}{more} ({age:.0f} s; Ctrl-C stops)"
        self._write("\r" + text + " " * max(0, self._shown - len(text)))
        self._shown = len(text)

    def _erase(self) -> None:
        if self._shown:
            self._write("\r" + " " * self._shown + "\r")
            self._shown = 0

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            self._stop.set()  # a closed terminal: nothing more to show

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Erase the line while the block writes to stderr; it comes back on the next tick."""
        with self._lock:
            self._erase()
            yield


_current: StatusLine | None = None


@contextmanager
def status_line(enabled: bool) -> Iterator[None]:
    """Show waits on stderr during the block if ``enabled`` and stderr is a terminal."""
    global _current
    from relay.client import progress

    if not enabled or not sys.stderr.isatty():
        yield
        return
    line = StatusLine(sys.stderr)
    _current = line
    progress.listen(line)
    line.start()
    try:
        yield
    finally:
        progress.listen(None)
        _current = None
        line.close()


@contextmanager
def pause() -> Iterator[None]:
    """Around any other write to stderr: the status line, if shown, is erased first."""
    line = _current
    if line is None:
        yield
        return
    with line.paused():
        yield
