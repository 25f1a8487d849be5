"""The PostgreSQL engine under the group-commit writer (``relay.store.db.Writer``).

psycopg 3's async API needs asyncio, so the relay drives a *sync* psycopg connection from the
writer's one worker thread, exactly as it drives SQLite: autocommit mode with explicit
``BEGIN``/``SAVEPOINT``/``COMMIT``, so every batch is one transaction and an answer still
means "committed".  The jobs get a :class:`PgConn`, the :class:`relay.store.conn.Conn` the
store's functions use, which rewrites each distinct statement once (cached) into psycopg's
dialect: ``?`` placeholders become ``%s``, a literal ``%`` becomes ``%%``, and SQLite's index
hints (``INDEXED BY name``) go.  Python ints are sent as ``bigint``, as SQLite stores them,
so a parameter's type never depends on its value.

Round trips: each job's ``SAVEPOINT`` is sent with the job's first statement in one pipeline
(:meth:`PgConn.defer_savepoint`), so a job costs one round trip per statement, no more; a
statement whose result nobody reads (a lock taken, :meth:`PgConn.defer`) goes the same way.
Consecutive posts, and consecutive join requests, of a batch share their statements
(``relay.store.db.Batch``, :attr:`PostgresDatabase._batches`): a batch of posts is the
savepoint, the chain locks and one read of every state and head in one round trip, then
every event, head and announcement in one statement.

Reads beside the writer (:meth:`PostgresDatabase.read`) run on :class:`PgReaders`, a small
``psycopg_pool`` pool of connections of the same kind, one read-only snapshot per read.

Errors: psycopg's ``OperationalError`` (the server shutting down or restarting, a lost
connection, "cannot connect now", a full disk, a deadlock or serialization failure) becomes
:class:`StoreUnavailable`, any other ``psycopg.Error`` :class:`StoreError`, the engine's error
kept as ``__cause__``.  A deadlock or serialization failure (another relay process's
transaction took its locks in another order) does not fail the batch's callers: the writer
runs the batch's jobs again, one per transaction (``Writer._conflict``).

A lost connection is opened again before the next batch, no more often
than a short, growing back-off allows, so a server restart gives typed ``unavailable``
answers meanwhile and full service after; nothing is answered before its COMMIT returned.
(A connection lost *during* COMMIT leaves that batch in doubt: its callers hear
``unavailable`` and the store's idempotent writes make asking again safe.)

Must not: log a password (:func:`redacted` strips it from the URL), hold policy, use the
writer's connection from another thread than the writer's, or write through the read pool.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import structlog
import trio
from psycopg.pq import TransactionStatus
from psycopg.types.numeric import Int8BinaryDumper, Int8Dumper
from psycopg_pool import ConnectionPool

from relay.store import pgschema
from relay.store.conn import Conn
from relay.store.db import ReadStats, Writer
from relay.store.errors import BackupUnsupported, StoreError, StoreUnavailable
from relay.store.pgurl import redacted

log = structlog.get_logger("relay.store")

CONNECT_TIMEOUT = 5  # seconds; a black-holed server must not hold the writer thread for long
RECONNECT_BACKOFF = (0.05, 2.0)  # the first wait after a failed connect, and the longest
READ_WAIT = 2.0  # seconds a read waits for a pooled connection before it is ``unavailable``
PREPARED_MAX = 512  # the store's distinct statements, with room: each is prepared once used often
_REWRITE_CACHE_MAX = 4096  # distinct statements (IN lists of many lengths would grow it)

_CONFLICTS = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure
_INDEX_HINT = re.compile(r"\s+INDEXED\s+BY\s+\w+", re.IGNORECASE)
_rewritten: dict[str, str] = {}
T = TypeVar("T")


def rewrite(sql: str) -> str:
    """SQLite's statement in psycopg's dialect (see the module's docstring).

    ``?`` inside a quoted literal or identifier stays as it is; ``%`` is doubled everywhere
    (psycopg reads ``%`` in literals too).
    """
    sql = _INDEX_HINT.sub("", sql)
    out: list[str] = []
    quote = ""
    for char in sql:
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "?":
            out.append("%s")
            continue
        out.append("%%" if char == "%" else char)
    return "".join(out)


class PgConn:
    """A psycopg connection as a :class:`relay.store.conn.Conn` (one per writer connection)."""

    __slots__ = ("_deferred", "_savepoint", "raw")
    # Other relay processes may use the same database at once (relay.store.fleet's locks and
    # announcements act only on such a connection).
    shared = True

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw
        self._savepoint = False  # a job's SAVEPOINT not sent yet: it goes with its first statement
        self._deferred: list[tuple[str, Sequence[Any]]] = []  # sent with the next statement

    def defer_savepoint(self) -> None:
        """Open the writer's next job savepoint (``SAVEPOINT job``) with the next statement,
        in one round trip to the server (psycopg's pipeline mode) instead of two: every job
        runs at least one statement, and a round trip is most of a small job's cost."""
        if self._deferred:
            # The previous job's last statements (a lock taken, nothing after): sent now, in
            # its savepoint, so they still hold what they take for the rest of the batch.
            self._send(None, ())
        self._savepoint = True

    def defer(self, sql: str, parameters: Sequence[Any] = (), /) -> None:
        """Send ``sql`` (whose result nobody reads, such as a lock taken) with the next
        statement, in the same pipeline and before it.  The server runs them in order, and in
        ``READ COMMITTED`` each statement takes its snapshot when it starts: the next statement
        reads under a lock the deferred one waited for, as if sent alone, one round trip less.
        An error of the deferred statement is raised by the next :meth:`execute` (or, sent
        last in a job, by the next job's savepoint or the ``COMMIT``: the batch's error)."""
        self._deferred.append((self._rewritten(sql), parameters))

    def discard(self) -> None:
        """Forget what was not sent: the transaction it belonged to is over."""
        self._deferred.clear()
        self._savepoint = False

    def roll_back_job(self) -> None:
        """Back to the job's savepoint; nothing to undo if the job sent no statement (its
        savepoint was never sent, and ``ROLLBACK TO`` would return to the previous job's)."""
        self._deferred.clear()
        if self._savepoint:
            self._savepoint = False
            return
        self.raw.execute("ROLLBACK TO job")

    @staticmethod
    def _rewritten(sql: str) -> str:
        query = _rewritten.get(sql)
        if query is None:
            if len(_rewritten) >= _REWRITE_CACHE_MAX:
                _rewritten.clear()
            query = _rewritten[sql] = rewrite(sql)
        return query

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        query = self._rewritten(sql)
        if self._savepoint or self._deferred:
            return self._send(query, parameters)
        # Parameters always given (even none): psycopg then reads ``%%`` as ``%``.
        return self.raw.execute(query, parameters)

    def _send(self, query: str | None, parameters: Sequence[Any]) -> psycopg.Cursor[Any]:
        """The job's savepoint if not sent yet, the deferred statements, then ``query`` (if
        any), in one pipeline: all sent, then one sync.  An error of any is raised here, after
        the pipeline ended, with the savepoint made if a later statement was what failed."""
        raw = self.raw
        deferred = self._deferred
        self._deferred = []
        with raw.pipeline():
            if self._savepoint:
                self._savepoint = False
                cursor = raw.execute("SAVEPOINT job")
            for before, values in deferred:
                cursor = raw.execute(before, values)
            if query is not None:
                cursor = raw.execute(query, parameters)
        return cursor


def _reason(exc: BaseException) -> str:
    """The first line of an engine error: psycopg's may add hints and context lines."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _options(url: str) -> dict[str, Any]:
    """psycopg's connection options the store's connections share (the pool's too)."""
    options: dict[str, Any] = {"autocommit": True, "application_name": "chat-relay"}
    if "connect_timeout" not in psycopg.conninfo.conninfo_to_dict(url):
        options["connect_timeout"] = CONNECT_TIMEOUT
    return options


def _adapt(raw: psycopg.Connection[Any]) -> None:
    """The store's adaptation of Python values on a new connection (see :func:`connect`)."""
    raw.prepared_max = PREPARED_MAX
    for dumper in (Int8Dumper, Int8BinaryDumper):
        raw.adapters.register_dumper(int, dumper)


def connect(url: str) -> psycopg.Connection[Any]:
    """A connection in autocommit mode with the store's adaptation of Python values (ints as
    ``bigint``; booleans stay ``boolean``, for ``CASE WHEN ?``: the store stores ``int(flag)``);
    raises psycopg's errors."""
    raw = psycopg.connect(url, **_options(url))
    _adapt(raw)
    return raw


def _translated(exc: BaseException, raw: psycopg.Connection[Any] | None) -> BaseException:
    """``exc``, or for a psycopg error the store's own: :class:`StoreUnavailable` when the
    server cannot serve now (psycopg's ``OperationalError``, or ``raw`` lost), else
    :class:`StoreError`; the engine's error kept as ``__cause__``."""
    if not isinstance(exc, psycopg.Error):
        return exc
    error: StoreError
    if isinstance(exc, psycopg.OperationalError) or (raw is not None and raw.closed):
        error = StoreUnavailable(_reason(exc))
    else:
        error = StoreError(_reason(exc))
    error.__cause__ = exc
    return error


class PgReaders:
    """Reads beside the writer: a small ``psycopg_pool.ConnectionPool``, each read one
    ``REPEATABLE READ READ ONLY`` transaction (one snapshot) on a worker thread of its own.

    The connections are the writer's kind (:func:`connect`'s options and adaptation) and read
    only besides (``default_transaction_read_only``).  A connection found lost (the server
    restarted) fails its read as :class:`StoreUnavailable` and the pool is checked at once, so
    the other idle connections that died with it are replaced in the background rather than
    each costing a read; a read waits at most ``wait`` seconds for a connection.
    """

    def __init__(self, url: str, *, size: int = 4, wait: float = READ_WAIT) -> None:
        if size < 1:
            raise ValueError("a pool of readers needs at least one connection")
        self._size = size
        self._wait = wait
        self._limiter = trio.CapacityLimiter(size)  # reads at once: no thread waits in the pool
        self._threads = trio.CapacityLimiter(size)  # see relay.store.reads.Readers
        self._total = 0
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            kwargs=_options(url),
            min_size=1,  # grows to ``size`` when reads overlap: a quiet relay holds one
            max_size=size,
            configure=self._configure,
            name="relay-reads",
            timeout=wait,
            open=False,
        )
        self._pool.open(wait=False)  # connects in the background; a read waits for one

    @staticmethod
    def _configure(raw: psycopg.Connection[Any]) -> None:
        _adapt(raw)
        raw.execute("SET default_transaction_read_only = on")

    def stats(self) -> ReadStats:
        limiter = self._limiter
        return ReadStats(self._size, limiter.borrowed_tokens, limiter.statistics().tasks_waiting, self._total)

    async def read(self, fn: Callable[[Conn], T]) -> T:
        self._total += 1
        async with self._limiter:
            # Not abandoned on cancel: the connection goes back to the pool only when idle.
            return await trio.to_thread.run_sync(self._run, fn, limiter=self._threads)

    def _run(self, fn: Callable[[Conn], T]) -> T:
        """On the worker thread: one read-only snapshot around ``fn``."""
        try:
            raw = self._pool.getconn()
        except psycopg.Error as exc:  # PoolTimeout (an OperationalError): no connection now
            raise _translated(exc, None) from exc
        try:
            raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                return fn(PgConn(raw))
            finally:
                if not raw.closed:
                    raw.execute("ROLLBACK")
        except psycopg.Error as exc:
            raise _translated(exc, raw) from exc
        finally:
            lost = raw.closed
            self._pool.putconn(raw)  # a lost or broken connection is replaced by the pool
            if lost:
                with contextlib.suppress(psycopg.Error):
                    self._pool.check()

    def close(self) -> None:
        self._pool.close(timeout=CONNECT_TIMEOUT)


class PostgresDatabase(Writer[Conn]):
    """The PostgreSQL engine: one connection on the writer thread, reopened when lost.

    Opening it connects and creates or migrates the schema (``relay.store.pgschema``), and
    raises :class:`StoreUnavailable` when the server cannot be reached.
    """

    _failures = (psycopg.Error, StoreUnavailable)
    _batches = True  # a statement is a round trip: consecutive posts share theirs

    def __init__(
        self,
        url: str,
        *,
        max_pending: int = 10_000,
        max_batch: int = 512,
        on_commit: Callable[[float, int], None] | None = None,
        read_connections: int = 4,
    ) -> None:
        self.url = url
        self._raw: psycopg.Connection[Any] | None = None
        self._readers: PgReaders | None = None
        self._conn = PgConn(self._open())
        self._next_connect = 0.0
        self._backoff = RECONNECT_BACKOFF[0]
        try:
            pgschema.migrate(self._conn.raw)
        except psycopg.Error as exc:
            self.close()
            raise self._translate(exc) from exc
        self._readers = PgReaders(url, size=read_connections)  # the schema is there now
        super().__init__(max_pending=max_pending, max_batch=max_batch, on_commit=on_commit)

    def _open(self) -> psycopg.Connection[Any]:
        try:
            self._raw = connect(self.url)
        except psycopg.Error as exc:
            raise self._translate(exc) from exc
        return self._raw

    def close(self) -> None:
        if self._readers is not None:
            self._readers.close()
        if self._raw is not None:
            self._raw.close()

    async def read(self, fn: Callable[[Conn], T]) -> T:
        assert self._readers is not None  # set before the store is handed out
        return await self._readers.read(fn)

    def read_stats(self) -> ReadStats:
        assert self._readers is not None
        return self._readers.stats()

    def _begin(self) -> Conn:
        raw = self._raw
        if raw is None or raw.closed:
            raw = self._reconnect()
        try:
            raw.execute("BEGIN")
        except psycopg.OperationalError:
            if not raw.closed:
                raise
            # The connection died while idle (the server restarted between batches): nothing
            # of this batch was sent yet, so a new connection may take it at once.
            raw = self._reconnect()
            raw.execute("BEGIN")
        self._conn.discard()  # nothing unsent of a transaction that ended before its COMMIT
        return self._conn

    def _reconnect(self) -> psycopg.Connection[Any]:
        now = time.monotonic()
        if now < self._next_connect:
            raise StoreUnavailable("the database server cannot be reached; reconnecting")
        if self._raw is not None:
            with contextlib.suppress(psycopg.Error):
                self._raw.close()
            self._raw = None
        try:
            raw = self._open()
        except StoreError:
            self._next_connect = now + self._backoff
            self._backoff = min(self._backoff * 2, RECONNECT_BACKOFF[1])
            raise
        self._conn.raw = raw
        self._backoff = RECONNECT_BACKOFF[0]
        self._next_connect = 0.0
        log.info("store.reconnected", url=redacted(self.url))
        return raw

    def _savepoint(self, conn: Conn) -> None:
        self._conn.defer_savepoint()

    def _roll_back_job(self, conn: Conn) -> None:
        self._conn.roll_back_job()

    def _lost(self, exc: BaseException) -> bool:
        if not isinstance(exc, psycopg.Error):
            return False
        raw = self._raw
        return (
            raw is None
            or raw.closed
            or raw.info.transaction_status not in (TransactionStatus.INTRANS, TransactionStatus.INERROR)
        )

    def _translate(self, exc: BaseException) -> BaseException:
        return _translated(exc, self._raw)

    def _roll_back(self) -> None:
        raw = self._raw
        if raw is None or raw.closed or raw.info.transaction_status == TransactionStatus.IDLE:
            return
        with contextlib.suppress(psycopg.Error):
            raw.execute("ROLLBACK")

    def _conflict(self, exc: BaseException) -> bool:
        # A deadlock or a serialization failure: another process's transaction met this one
        # (its locks taken in another order); PostgreSQL gave up on one of them.
        return isinstance(exc, psycopg.Error) and exc.sqlstate in _CONFLICTS

    def _retry_alone(self) -> bool:
        # Not on a lost connection: its COMMIT may have landed, and running the jobs again
        # would do them twice; their callers hear ``unavailable`` instead.
        return self._raw is not None and not self._raw.closed

    async def backup(self, target: Path) -> int:
        raise BackupUnsupported(
            "a PostgreSQL store is backed up with PostgreSQL's own tools (pg_dump, or base "
            "backups with WAL archiving), not by the relay"
        )
