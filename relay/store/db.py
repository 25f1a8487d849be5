"""The SQLite edge: one connection, one worker thread, group commit.

``aiosqlite`` runs only on asyncio, so the database is stdlib ``sqlite3`` driven
through ``trio.to_thread.run_sync`` with a limiter of one.  Callers hand
:meth:`Database.transact` a plain function of the connection; the writer task
gathers every job that is waiting, runs them in *one* transaction (each inside
its own SAVEPOINT, so one failing job rolls back alone), commits, and only then
wakes the callers.  An answer therefore always means "committed", and many
concurrent requests cost one commit.  The pending-job channel is bounded.

Online backups read through a second, read-only connection (see :meth:`Database.backup`).

Must not: hold any policy, or use the writer's connection from more than the one worker thread.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import structlog
import trio

from relay.store.migrations import migrate

T = TypeVar("T")
log = structlog.get_logger("relay.store")

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


@dataclass(eq=False)
class Job(Generic[T]):
    fn: Callable[[sqlite3.Connection], T]
    on_commit: Callable[[T], None] | None = None
    done: trio.Event = field(default_factory=trio.Event)
    result: T | None = None
    error: BaseException | None = None


@dataclass
class CommitStats:
    """Counters the metrics endpoint reads: how well group commit is batching."""

    commits: int = 0
    jobs: int = 0
    largest_batch: int = 0
    commit_seconds: float = 0.0
    queue_full: int = 0


class Database:
    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "FULL",
        max_pending: int = 10_000,
        max_batch: int = 512,
        on_commit: Callable[[float, int], None] | None = None,
    ) -> None:
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}")
        self.path = path
        # Created private before SQLite opens it: its -wal and -shm files copy this mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        self._conn.execute("PRAGMA foreign_keys=ON")
        migrate(self._conn)
        self._limiter = trio.CapacityLimiter(1)
        self._send, self._receive = trio.open_memory_channel[Job[Any]](max_pending)
        self._max_batch = max_batch
        self.stats = CommitStats()
        self._backup_lock = trio.Lock()  # one backup at a time
        # Called on the trio thread after each commit with (seconds, jobs): the metrics'
        # histograms are not thread-safe, so the worker thread never touches them.
        self.on_commit = on_commit

    def close(self) -> None:
        self._conn.close()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task: gather waiting jobs, run them in one transaction, commit, wake."""
        task_status.started()
        async for first in self._receive:
            batch: list[Job[Any]] = [first]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            seconds = None
            try:
                # Not abandoned on cancel: the thread always finishes its transaction first.
                seconds = await trio.to_thread.run_sync(self._run_batch, batch, limiter=self._limiter)
            finally:
                if seconds is not None:
                    self._after_commit(batch)
                for job in batch:
                    job.done.set()
            if seconds is not None and self.on_commit is not None:
                self.on_commit(seconds, len(batch))

    def _after_commit(self, batch: list[Job[Any]]) -> None:
        """Run the jobs' ``on_commit`` hooks on the trio thread, in commit order."""
        for job in batch:
            if job.on_commit is not None and job.error is None:
                try:
                    job.on_commit(job.result)
                except Exception as exc:  # a hook's bug must not stop the writer
                    log.exception("store.on_commit_failed")
                    job.error = exc

    async def transact(
        self, fn: Callable[[sqlite3.Connection], T], *, on_commit: Callable[[T], None] | None = None
    ) -> T:
        """Run ``fn`` inside a committed transaction and return its result.

        ``fn`` runs on the worker thread: it must only use the connection it is
        given and return plain values.  If it raises, its changes are rolled
        back and the exception is re-raised here; other jobs are unaffected.
        ``on_commit`` (if given) is called with the result on the trio thread right after
        the COMMIT, before any caller wakes, in the order the jobs ran: what a job saw in the
        database and what the hooks of earlier jobs did are in step (the fan-out relies on it).
        It must not block.
        """
        return await self.result(await self.submit(fn, on_commit=on_commit))

    async def submit(
        self, fn: Callable[[sqlite3.Connection], T], *, on_commit: Callable[[T], None] | None = None
    ) -> Job[T]:
        """Queue ``fn`` like :meth:`transact` without waiting for its commit: a connection can
        have several requests in flight (pipelined posts) and still answer them in order."""
        job: Job[T] = Job(fn, on_commit)
        try:
            self._send.send_nowait(job)
        except trio.WouldBlock:
            self.stats.queue_full += 1
            log.warning("bound.hit", bound="db_pending_jobs", limit=self._send.statistics().max_buffer_size)
            await self._send.send(job)
        return job

    @staticmethod
    async def result(job: Job[T]) -> T:
        """Wait for a submitted job's commit; its result, or its error raised here."""
        # Shielded: once queued, the job will run; the caller must not vanish
        # before it knows whether its write committed.
        with trio.CancelScope(shield=True):
            await job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _run_batch(self, batch: list[Job[Any]]) -> float | None:
        """One transaction for the whole batch; returns its duration, or None if it failed."""
        conn = self._conn
        started = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    job.result = job.fn(conn)
                except BaseException as exc:
                    conn.execute("ROLLBACK TO job")
                    job.error = exc
                conn.execute("RELEASE job")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            log.error("store.commit_failed", error=str(exc), jobs=len(batch))
            for job in batch:
                job.result, job.error = None, exc
            return None
        seconds = time.perf_counter() - started
        self.stats.commits += 1
        self.stats.jobs += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        self.stats.commit_seconds += seconds
        return seconds

    async def backup(self, target: Path) -> int:
        """Copy the database to ``target`` (a new file, created 0600) while writers go on.

        The copy is read through a second, read-only connection, on a thread of its own,
        in one ``sqlite3_backup_step`` (all pages), which is one WAL read transaction: a
        consistent snapshot that never blocks the writer.  Why not the writer's connection
        in ``pages=`` steps: Python's ``Connection.backup`` runs every step in one call,
        so the writer thread (and every request waiting for a commit) would stall for the
        whole copy; steps on a *separate* connection restart whenever a commit lands in
        between, which under steady writes may never finish.  Returns the size in bytes.
        """
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # refuses an existing file
        os.close(fd)
        try:
            async with self._backup_lock:
                await trio.to_thread.run_sync(self._copy_to, target)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return target.stat().st_size

    def _copy_to(self, target: Path) -> None:
        source = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True)
        dest = sqlite3.connect(target)
        try:
            source.backup(dest, pages=-1)
            # A self-contained file: no -wal/-shm beside the copy; the relay turns WAL on at start.
            dest.execute("PRAGMA journal_mode=DELETE")
        finally:
            dest.close()
            source.close()
