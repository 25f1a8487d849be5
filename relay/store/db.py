"""The group-commit writer, and the SQLite engine under it.

``aiosqlite`` runs only on asyncio (as does psycopg's async API), so a database is driven
by one worker thread, started with ``trio.to_thread.run_sync`` (a limiter of one) and owned
by the writer task.  Callers hand :meth:`Writer.transact` a plain function of the
connection; the thread takes every job that is waiting, runs them in *one* transaction
(each inside its own SAVEPOINT, so one failing job rolls back alone), commits, and only
then wakes the callers.  An answer therefore always means "committed", and many concurrent
requests cost one commit.  Pending jobs are bounded.

The thread runs batch after batch on its own: the callers are woken through the trio
token, and the next batch starts at once, with no trip through the trio scheduler in
between.  (With one ``to_thread`` hop per batch, each commit waited for the writer task
to be scheduled two or three times, each time behind every runnable connection task:
under load the writer thread sat idle most of the time while jobs queued.)

:class:`Writer` is that machinery, whichever engine is below; an engine (:class:`Database`
here for SQLite, :class:`relay.store.postgres.PostgresDatabase`) supplies the connection,
how a transaction begins, how its errors translate, and what "the whole transaction is
gone" looks like.  The jobs' statements go straight to the engine's connection: the writer
adds nothing per statement.

Batches: on an engine where every statement is a round trip to a server (PostgreSQL), a run
of consecutive jobs of one kind (posts, join requests) that say how to run together
(:class:`Batch`) shares its statements: a few per run instead of a few per job.  The run is
one savepoint; a job refused by its checks writes nothing; if a shared statement fails, the
run's savepoint is rolled back and each of its jobs runs again alone, so no job's fault
fails another.  SQLite runs each job's own function (a statement there is a function call).

Reads that need not be in step with the commit order (listings, stats, heads, discovery) go
through :meth:`Writer.read` instead: a small pool of read-only connections beside the writer
(SQLite: :class:`relay.store.reads.Readers`; PostgreSQL: a psycopg pool), so they never wait
for a batch.  Online backups of SQLite read through a second, read-only connection (see
:meth:`Database.backup`).

When the database cannot take writes (its disk is full, an I/O error, a read-only file
system, a database server restarting), a job fails with :class:`StoreUnavailable`, a typed
"not now" the server answers as ``unavailable``; reads go on meanwhile (a batch whose commit
fails is run again one job per transaction, and a transaction that wrote nothing commits on
a full disk), and writes work again as soon as the disk does.

Must not: hold any policy, or use the writer's connection from more than the one worker thread.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import structlog
import trio

from relay.protocol.crypto import verify_forbidden
from relay.store.conn import Conn
from relay.store.errors import StoreError, StoreUnavailable
from relay.store.migrations import migrate

T = TypeVar("T")
C = TypeVar("C", bound=Conn, covariant=True)
log = structlog.get_logger("relay.store")

# SQLite's primary result codes that mean "the database cannot take this now", not "this
# request is wrong": a full disk, I/O errors, a read-only or vanished file, a lock held
# elsewhere past the busy time-out, no memory.
_UNAVAILABLE_CODES = frozenset(
    {
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
    }
)
UNAVAILABLE_LOG_INTERVAL = 10.0
CONFLICT_ATTEMPTS = 3  # a job that meets another process's transaction, run alone at most this often


def _translated(exc: BaseException) -> BaseException:
    """``exc``, or for an SQLite error the store's own: :class:`StoreUnavailable` for one that
    means "not now", :class:`StoreError` for the rest."""
    if not isinstance(exc, sqlite3.Error):
        return exc
    code = getattr(exc, "sqlite_errorcode", None)
    error: StoreError
    if code is not None and code & 0xFF in _UNAVAILABLE_CODES:
        error = StoreUnavailable(str(exc))
    else:
        error = StoreError(str(exc) or type(exc).__name__)
    error.__cause__ = exc
    return error


SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


class Batch(Protocol):
    """How a run of consecutive jobs of one kind is done together, on an engine where each
    statement is a round trip (PostgreSQL, :attr:`Writer._batches`): their statements shared,
    a few per run instead of a few per job.  The jobs' own ``fn`` stays the reference (SQLite
    runs it, and so does the writer for any job the batch leaves, or after a batch failed).

    :meth:`run` takes the jobs in order, from the first, for as long as it can, and returns
    how many it took (0: the first must run alone, through its ``fn``).  It sets each taken
    job's ``result`` or ``error`` only once nothing can fail any more: if it raises, every
    job it was given runs again alone, each in its own savepoint, as if never batched.  A
    job's error must be its own (a refused request): its writes are never sent.
    """

    def run(self, conn: Any, jobs: Sequence[Job[Any]]) -> int: ...


@dataclass(eq=False, slots=True)
class Job(Generic[T]):
    """One caller's function, queued for the writer thread, and what came of it."""

    fn: Callable[[Any], T]
    on_commit: Callable[[T], None] | None = None
    batch: Batch | None = None  # how to run it with its neighbours of the same batch, if any
    item: Any = None  # what ``batch`` needs of this job
    result: T | None = None
    error: BaseException | None = None
    done: bool = False
    waiter: trio.lowlevel.Task | None = None  # rescheduled once the job has committed (or failed)


def settle(jobs: Sequence[Job[Any]], outcomes: Sequence[object]) -> int:
    """How a :meth:`Batch.run` ends once nothing can fail: each of the first ``len(outcomes)``
    jobs gets its outcome (an exception as its error); returns how many jobs were done."""
    for job, outcome in zip(jobs, outcomes, strict=False):
        if isinstance(outcome, BaseException):
            job.error = outcome
        else:
            job.result = outcome
    return len(outcomes)


def _not_cancellable(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


@dataclass
class CommitStats:
    """Counters the metrics endpoint reads: how well group commit is batching."""

    commits: int = 0
    jobs: int = 0
    largest_batch: int = 0
    commit_seconds: float = 0.0
    queue_full: int = 0
    unavailable: int = 0  # jobs failed with StoreUnavailable


@dataclass(frozen=True)
class ReadStats:
    """The read pool beside the writer, for the metrics: its size, the reads running on its
    connections, those waiting for one, and the reads started since the store opened."""

    size: int
    in_flight: int
    waiting: int
    total: int


class Writer(Generic[C]):
    """Group commit on one worker thread, over an engine's connection of type ``C``.

    An engine subclass sets :attr:`_failures` (the exceptions that fail a whole
    transaction) and implements :meth:`_begin`, :meth:`_lost`, :meth:`_translate`,
    :meth:`_roll_back`, :meth:`close` and :meth:`backup`; it may refuse the one-job-at-a-time
    retry with :meth:`_retry_alone`.
    """

    _failures: ClassVar[tuple[type[BaseException], ...]]
    # Whether consecutive jobs with a ``batch`` run through it (:class:`Batch`): worth it
    # where a statement is a round trip to a server, not where it is a function call.
    _batches: ClassVar[bool] = False

    def __init__(
        self,
        *,
        max_pending: int,
        max_batch: int,
        on_commit: Callable[[float, int], None] | None,
    ) -> None:
        self._jobs: queue.SimpleQueue[Job[Any] | None] = queue.SimpleQueue()  # None: stop
        self._room = trio.Semaphore(max_pending)
        self._max_pending = max_pending
        self._max_batch = max_batch
        self.stats = CommitStats()
        self._unavailable_logged = -UNAVAILABLE_LOG_INTERVAL
        self._unavailable_jobs = 0
        # Called on the trio thread after each commit with (seconds, jobs): the metrics'
        # histograms are not thread-safe, so the worker thread never touches them.
        self.on_commit = on_commit

    # --- what an engine supplies -----------------------------------------------------------

    def _begin(self) -> C:
        """Open a transaction (on the worker thread); the connection the batch's jobs get."""
        raise NotImplementedError

    def _lost(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised by a job, took the whole transaction with it (the engine
        rolled it back itself, or the connection is gone): no savepoint is left to return to."""
        raise NotImplementedError

    def _translate(self, exc: BaseException) -> BaseException:
        """An engine error as the store's own (:class:`StoreError`); anything else as it is."""
        raise NotImplementedError

    def _roll_back(self) -> None:
        """End a failed transaction, if one is still open; never raises an engine error."""
        raise NotImplementedError

    def _savepoint(self, conn: Conn) -> None:
        """Open the next job's savepoint (an engine may send it with the job's first statement)."""
        conn.execute("SAVEPOINT job")

    def _roll_back_job(self, conn: Conn) -> None:
        """Undo the failed job alone: back to its savepoint."""
        conn.execute("ROLLBACK TO job")

    def _retry_alone(self) -> bool:
        """Whether a batch whose transaction failed may run again job by job."""
        return True

    def _conflict(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a conflict with another process's transaction (a deadlock, a
        serialization failure): the batch is run again, one job per transaction, instead of
        failing its jobs.  Never with SQLite (one process, one writer)."""
        return False

    def close(self) -> None:
        raise NotImplementedError

    async def backup(self, target: Path) -> int:
        raise NotImplementedError

    async def read(self, fn: Callable[[C], T]) -> T:
        """Run ``fn`` in a read-only snapshot of the last commit, on a pooled connection
        beside the writer, never behind its queue, and return its result; engine errors come
        out as the store's own.  No ``on_commit``: the answer is not in step with the commit
        order, so a subscription's pages must use :meth:`transact`.  ``fn`` cannot write."""
        raise NotImplementedError

    def read_stats(self) -> ReadStats:
        raise NotImplementedError

    # --- the writer ------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Jobs submitted and not yet answered (queued, running, or committed and about to
        wake their callers).  Tests on trio's ``MockClock`` move the clock only when this is 0:
        a transaction takes real time on the writer thread, none on the virtual clock."""
        return self._max_pending - self._room.value

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task: owns the worker thread for the database's lifetime.

        Cancelled, it tells the thread to stop after the jobs already queued, and waits for
        it: everything a caller was promised is committed (or failed) before this returns.
        """
        token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._stop_when_cancelled)
            task_status.started()
            # Not abandoned on cancel: this returns once the thread has run every queued job.
            await trio.to_thread.run_sync(self._write_loop, token, limiter=trio.CapacityLimiter(1))

    async def _stop_when_cancelled(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self._jobs.put(None)

    async def transact(
        self,
        fn: Callable[[C], T],
        *,
        on_commit: Callable[[T], None] | None = None,
        batch: Batch | None = None,
        item: object = None,
    ) -> T:
        """Run ``fn`` inside a committed transaction and return its result.

        ``fn`` runs on the worker thread: it must only use the connection it is
        given and return plain values.  If it raises, its changes are rolled
        back and the exception is re-raised here; other jobs are unaffected.
        ``on_commit`` (if given) is called with the result on the trio thread right after
        the COMMIT, before any caller wakes, in the order the jobs ran: what a job saw in the
        database and what the hooks of earlier jobs did are in step (the fan-out relies on it).
        It must not block.  ``batch`` and ``item``: how the engine may run ``fn`` together
        with its neighbours of the same kind (:class:`Batch`).
        """
        return await self.result(await self.submit(fn, on_commit=on_commit, batch=batch, item=item))

    async def submit(
        self,
        fn: Callable[[C], T],
        *,
        on_commit: Callable[[T], None] | None = None,
        batch: Batch | None = None,
        item: object = None,
    ) -> Job[T]:
        """Queue ``fn`` like :meth:`transact` without waiting for its commit: a connection can
        have several requests in flight (pipelined posts) and still answer them in order.
        ``batch`` and ``item``: how the engine may run it with its neighbours (:class:`Batch`)."""
        job: Job[T] = Job(fn, on_commit, batch, item)
        try:
            self._room.acquire_nowait()
        except trio.WouldBlock:
            self.stats.queue_full += 1
            log.warning("bound.hit", bound="db_pending_jobs", limit=self._max_pending)
            await self._room.acquire()
        self._jobs.put(job)
        return job

    @staticmethod
    async def result(job: Job[T]) -> T:
        """Wait for a submitted job's commit; its result, or its error raised here."""
        if not job.done:
            job.waiter = trio.lowlevel.current_task()
            # Not cancellable (as in a shielded scope, without the scope's cost): the job will
            # run, and the caller must not vanish before it knows whether it committed.
            await trio.lowlevel.wait_task_rescheduled(_not_cancellable)
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _write_loop(self, token: trio.lowlevel.TrioToken) -> None:
        """The worker thread: every waiting job in one transaction, batch after batch."""
        with verify_forbidden("the database writer (verify before the transaction)"):
            self._write_batches(token)

    def _write_batches(self, token: trio.lowlevel.TrioToken) -> None:
        jobs = self._jobs
        stopping = False
        while not stopping:
            first = jobs.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    job = jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                batch.append(job)
            try:
                seconds = self._run_batch(batch)
            except BaseException as exc:  # not a database error (those fail the batch): a bug
                for job in batch:
                    job.result, job.error = None, exc
                token.run_sync_soon(self._committed, batch, None)
                raise
            token.run_sync_soon(self._committed, batch, seconds)

    def _committed(self, batch: list[Job[Any]], seconds: float | None) -> None:
        """On the trio thread, after a batch's COMMIT (or its failure): run the jobs'
        ``on_commit`` hooks in commit order, then wake their callers.

        The token runs these callbacks in the order the thread queued them, so the hooks of
        one batch all run before those of the next, and rescheduling only queues a caller:
        no caller runs before every hook of its batch has.
        """
        for job in batch:
            if seconds is not None and job.on_commit is not None and job.error is None:
                try:
                    job.on_commit(job.result)
                except Exception as exc:  # a hook's bug must not stop the writer
                    log.exception("store.on_commit_failed")
                    job.error = exc
            job.done = True
            if job.waiter is not None:
                trio.lowlevel.reschedule(job.waiter)
            self._room.release()
        if seconds is not None and self.on_commit is not None:
            self.on_commit(seconds, len(batch))

    def _run_batch(self, batch: list[Job[Any]]) -> float | None:
        """One transaction for the whole batch; returns its duration, or None if it failed."""
        started = time.perf_counter()
        try:
            conn = self._begin()
            index = 0
            while index < len(batch):
                job = batch[index]
                if self._batches and job.batch is not None:
                    end = index + 1
                    while end < len(batch) and batch[end].batch is job.batch:
                        end += 1
                    if end - index > 1:
                        index += self._run_together(conn, batch[index:end])
                        if index == end:
                            continue
                        # The batch stopped at this job (it needs something of its own): alone.
                self._run_job(conn, batch[index])
                index += 1
            conn.execute("COMMIT")
        except self._failures as exc:
            self._roll_back()
            error = self._translate(exc)
            if self._conflict(exc) and self._retry_alone():
                # Another process's transaction held what this one wanted, and this one was
                # given up: alone, each job holds what it alone needs.
                return self._run_alone(batch, started)
            if len(batch) > 1 and self._retry_alone():
                # The writes cannot commit (a full disk, say), but the reads among these jobs
                # can: a transaction that wrote nothing commits.  Or a statement sent with the
                # COMMIT (``relay.store.conn.send_later``) failed for one job: alone, it fails
                # no other.  One transaction per job.
                if not isinstance(error, StoreUnavailable):
                    log.warning("store.batch_failed", error=str(error), jobs=len(batch))
                return self._run_alone(batch, started)
            self._report_failure(error, len(batch))
            for job in batch:
                job.result, job.error = None, self._count(error)
            return None
        return self._committed_in(started, len(batch))

    def _run_job(self, conn: Conn, job: Job[Any]) -> None:
        """One job of the batch's transaction, in its own savepoint."""
        # Each job's savepoint nests in the previous job's, and COMMIT ends them all:
        # a RELEASE per job would be one more statement, and every statement hands
        # the GIL back and forth several times (the trio thread then takes it).
        # ROLLBACK TO reverts to the newest savepoint of that name: this job's alone.
        self._savepoint(conn)
        try:
            job.result = job.fn(conn)
        except BaseException as exc:
            if self._lost(exc) or self._conflict(exc):
                # Every job of the batch is undone (SQLite may roll back by itself on
                # a full disk or an I/O error; a lost server connection takes it all;
                # a deadlock with another process is retried job by job).
                raise
            self._roll_back_job(conn)
            job.error = self._count(self._translate(exc))

    def _run_together(self, conn: Conn, jobs: list[Job[Any]]) -> int:
        """Consecutive jobs of one :class:`Batch` in one savepoint; how many it took.  If the
        batch fails (but for the whole transaction), its savepoint is rolled back and each of
        its jobs runs alone: a statement failing for one job fails no other."""
        batch = jobs[0].batch
        assert batch is not None
        self._savepoint(conn)
        try:
            return batch.run(conn, jobs)
        except BaseException as exc:
            if self._lost(exc) or self._conflict(exc):
                raise
            self._roll_back_job(conn)
            log.warning("store.batch_failed", error=str(self._translate(exc)), jobs=len(jobs))
        for job in jobs:
            job.result, job.error = None, None
            self._run_job(conn, job)
        return len(jobs)

    def _run_alone(self, batch: list[Job[Any]], started: float) -> float | None:
        """Each job in a transaction of its own (after the batch's commit failed, or it met
        another process's transaction); a job that conflicts again is tried a few times."""
        committed = 0
        for job in batch:
            for attempt in range(1, CONFLICT_ATTEMPTS + 1):
                if self._run_one(job, last=attempt == CONFLICT_ATTEMPTS):
                    committed += 1 if job.error is None else 0
                    break
        return self._committed_in(started, committed) if committed else None

    def _run_one(self, job: Job[Any], *, last: bool) -> bool:
        """One job in its own transaction; False if it conflicted and may be tried again."""
        job.result, job.error = None, None
        try:
            conn = self._begin()
            try:
                job.result = job.fn(conn)
            except BaseException as exc:
                self._roll_back()
                if self._conflict(exc) and not last:
                    return False
                job.result, job.error = None, self._count(self._translate(exc))
                return True
            conn.execute("COMMIT")
        except self._failures as exc:
            self._roll_back()
            if self._conflict(exc) and not last:
                return False
            error = self._translate(exc)
            self._report_failure(error, 1)
            job.result, job.error = None, self._count(error)
        return True

    def _count(self, error: BaseException) -> BaseException:
        if isinstance(error, StoreUnavailable):
            self.stats.unavailable += 1
        return error

    def _report_failure(self, error: BaseException, jobs: int) -> None:
        """Log a failed transaction; a store that stays unavailable is logged every 10 s."""
        if not isinstance(error, StoreUnavailable):
            log.error("store.commit_failed", error=str(error), jobs=jobs)
            return
        now = time.monotonic()
        self._unavailable_jobs += jobs
        if now - self._unavailable_logged >= UNAVAILABLE_LOG_INTERVAL:
            log.warning("store.unavailable", error=error.error, jobs=self._unavailable_jobs)
            self._unavailable_logged, self._unavailable_jobs = now, 0

    def _committed_in(self, started: float, jobs: int) -> float:
        seconds = time.perf_counter() - started
        self.stats.commits += 1
        self.stats.jobs += jobs
        self.stats.largest_batch = max(self.stats.largest_batch, jobs)
        self.stats.commit_seconds += seconds
        return seconds


class Database(Writer[sqlite3.Connection]):
    """The SQLite engine: one file, one connection in WAL mode, the default store."""

    _failures = (sqlite3.Error,)

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "FULL",
        max_pending: int = 10_000,
        max_batch: int = 512,
        on_commit: Callable[[float, int], None] | None = None,
        read_connections: int = 4,
    ) -> None:
        from relay.store.reads import Readers  # it builds on this module's error translation

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
        # Opened after the migration: a read-only connection cannot create the schema.
        self._readers = Readers(path, size=read_connections)
        super().__init__(max_pending=max_pending, max_batch=max_batch, on_commit=on_commit)
        self._backup_lock = trio.Lock()  # one backup at a time

    def close(self) -> None:
        self._readers.close()
        self._conn.close()

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._readers.read(fn)

    def read_stats(self) -> ReadStats:
        return self._readers.stats()

    def _begin(self) -> sqlite3.Connection:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        return conn

    def _lost(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.Error) and not self._conn.in_transaction

    def _translate(self, exc: BaseException) -> BaseException:
        return _translated(exc)

    def _roll_back(self) -> None:
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # an I/O error may fail this too
                self._conn.execute("ROLLBACK")

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
