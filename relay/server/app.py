"""The daemon: one nursery tree that owns the database writer, the listeners and every task.

Shutdown order is what makes SIGTERM safe: stop accepting, let open
connections finish for ``shutdown_grace`` seconds, and only then stop the
database writer, so everything a client was told is committed.  The bound
addresses are written to ``DATA/run.json`` for the admin command line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import msgspec
import structlog
import trio

from relay.protocol.addresses import contact_address
from relay.server import accept, admintoken, memory
from relay.server.admin import AdminEndpoint
from relay.server.admission import Admissions
from relay.server.bounds import Bounds
from relay.server.clock import Clock
from relay.server.config import Config, split_host_port
from relay.server.datadir import StartupError as StartupError
from relay.server.datadir import explained, token_problem
from relay.server.decisions import Decisions
from relay.server.events import Channels
from relay.server.identity import KEY_FILE, Identity, load_or_create
from relay.server.metrics import Metrics
from relay.server.notify import Notifier
from relay.server.pending import InvitationBudgets
from relay.server.profiles import VerifiedProfiles
from relay.server.public import PublicEndpoint
from relay.server.service import GroupService, PolicyHolder
from relay.server.signals import GroupSignals
from relay.server.sweeper import Sweeper
from relay.server.timeline import Timelines
from relay.server.tls import TlsError, server_context
from relay.server.worker import JoinWorker
from relay.store.errors import StoreError
from relay.store.opening import Store, open_store
from relay.store.pgurl import redacted

log = structlog.get_logger("relay.app")

DB_FILE = "relay.db"
RUN_FILE = "run.json"
LOCK_FILE = "relay.lock"
BACKUP_DIR = "backups"  # storage.backup_dir's default, below the data folder
# The sections SIGHUP applies in place; a change anywhere else waits for a restart (it is read
# into listeners, the database, the workers and the log set up at start).
RELOADABLE = frozenset({"policy"})


def changed_options(old: Config, new: Config) -> list[str]:
    """``section.key`` of every option whose value differs, in the order of the structs."""
    changed: list[str] = []
    for section in Config.__struct_fields__:
        before, after = getattr(old, section), getattr(new, section)
        for key in type(before).__struct_fields__:
            if getattr(before, key) != getattr(after, key):
                changed.append(f"{section}.{key}")
    return changed


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the data folder: two daemons on one database would each
    believe their own answers, and their group addresses would diverge."""
    with explained(data_dir / LOCK_FILE, data_dir):
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StartupError(f"another relay is already running with the data folder {data_dir}") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


async def _listen(text: str, *, reuse_port: bool = False) -> list[trio.SocketListener]:
    host, port = split_host_port(text)
    try:
        if reuse_port:
            return await _reuse_port_listeners(host, port)
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise StartupError(f"cannot listen on {text}: {exc.strerror or exc}") from None


async def _reuse_port_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """What ``trio.open_tcp_listeners`` binds, with SO_REUSEPORT (which it cannot be asked for):
    several relay processes of one fleet take the same port, and the kernel spreads new
    connections over them."""
    addresses = await trio.socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    listeners: list[trio.SocketListener] = []
    try:
        for family, kind, proto, _, address in addresses:
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as trio does
                await sock.bind(address)
                sock.listen(socket.SOMAXCONN)
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


async def _own_nursery(*, task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED) -> None:
    """A nursery that lives until cancelled, for tasks that must stop at a chosen moment."""
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()


@dataclass
class ReadyInfo:
    address: str
    listen: str
    admin_listen: str


def _host_port(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _admit_operator(address: object) -> Literal[True]:
    """The operator port takes every connection (it is reached from loopback or a firewall)."""
    return True


def _operator_handler(admin: AdminEndpoint) -> Callable[[trio.SocketStream, object], Awaitable[None]]:
    async def handle(stream: trio.SocketStream, _: object) -> None:
        await admin.handle(stream)

    return handle


def raise_fd_limit() -> None:
    """Many idle clients need many descriptors; take the hard limit we are allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Parts:
    """The running relay's components, for in-process tests that drive them on trio's
    ``MockClock`` (``Relay.parts`` once ready)."""

    db: Store
    service: GroupService
    admissions: Admissions
    worker: JoinWorker
    channels: Channels
    public: PublicEndpoint
    sweeper: Sweeper
    admin: AdminEndpoint


@dataclass
class Relay:
    config: Config
    data_dir: Path
    # Wall time for dates, trio's clock for waits (relay.server.clock); tests give another wall.
    clock: Clock = field(default_factory=Clock)
    identity: Identity = field(init=False)
    metrics: Metrics = field(default_factory=Metrics)
    bounds: Bounds = field(init=False)
    budgets: InvitationBudgets = field(init=False)
    notifier: Notifier = field(default_factory=Notifier)
    started: float = field(default_factory=time.time)
    # Which process of a fleet this is (8 random hex characters made at start): in relay.ready,
    # as a label on /metrics and in the fleet's notifications.
    process_id: str = field(default_factory=lambda: secrets.token_hex(4))
    ready: ReadyInfo | None = None
    parts: Parts | None = None
    _stop: trio.Event = field(default_factory=trio.Event)
    _policy: PolicyHolder = field(init=False)
    _admin: AdminEndpoint | None = None

    def __post_init__(self) -> None:
        with explained(self.data_dir / KEY_FILE, self.data_dir):
            self.identity, created = load_or_create(self.data_dir)
        if created:
            log.info("identity.created", fingerprint=self.identity.fingerprint_text)
        self._policy = PolicyHolder(self.config.policy.to_policy())
        self.bounds = Bounds(self.metrics, clock=self.clock.monotonic)
        policy = self.config.policy
        self.budgets = InvitationBudgets(
            per_minute=policy.invitations_per_ip_per_minute,
            max_pending=policy.max_pending_groups_per_ip,
            bounds=self.bounds,
        )

    def stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does)."""
        self._stop.set()

    def reload_config(self, config: Config) -> None:
        """SIGHUP: apply what can change in place ([policy]), say which other changes wait.

        Compared with the configuration in force: ``config.reloaded`` names the options applied,
        ``config.restart_needed`` the changed options that only a restart applies (the relay
        goes on with the values it started with), ``config.unchanged`` says there was nothing
        to do.  Connections are untouched.
        """
        changed = changed_options(self.config, config)
        applied = [key for key in changed if key.partition(".")[0] in RELOADABLE]
        waiting = [key for key in changed if key not in applied]
        if applied:
            self._policy.policy = config.policy.to_policy()
            self.budgets.configure(
                per_minute=config.policy.invitations_per_ip_per_minute,
                max_pending=config.policy.max_pending_groups_per_ip,
            )
            self.config = msgspec.structs.replace(self.config, policy=config.policy)
            log.info("config.reloaded", applied=applied)
        if waiting:
            log.warning(
                "config.restart_needed",
                options=waiting,
                reason="SIGHUP applies [policy] only; restart the relay to apply these",
            )
        if not changed:
            log.info("config.unchanged")

    # relay/cli/serve.py calls it by this name (it once reloaded the policy alone).
    reload_policy = reload_config

    def reload_admin_token(self) -> None:
        """Read ``DATA/admin.token`` again (SIGHUP), making a new one if it was deleted:
        a rotated token applies to the next operator request.  A file that cannot be used
        keeps the token in force."""
        if self._admin is None:
            return
        try:
            self._admin.token = self._admin_token()
        except admintoken.TokenError as exc:
            log.error("admin_token.reload_failed", reason=str(exc))

    def _admin_token(self) -> str:
        token, created = admintoken.load_or_create(self.data_dir)
        path = str(self.data_dir / admintoken.TOKEN_FILE)
        if created:
            log.info("admin_token.created", path=path)
        elif admintoken.exposed(self.data_dir):
            log.warning("admin_token.exposed", path=path, reason="readable by other users: chmod 600 it")
        return token

    @property
    def shared_data_dir(self) -> bool:
        """With PostgreSQL the data folder holds only the identity and the token, and several
        processes of one fleet share it: no lock, and each writes ``run.json``."""
        return bool(self.config.storage.url)

    async def run(self, *, task_status: trio.TaskStatus[ReadyInfo] = trio.TASK_STATUS_IGNORED) -> None:
        if self.shared_data_dir:
            await self._run(task_status)
            return
        with data_dir_lock(self.data_dir):
            await self._run(task_status)

    async def _run(self, task_status: trio.TaskStatus[ReadyInfo]) -> None:
        raise_fd_limit()
        memory.tune()
        server = self.config.server
        storage = self.config.storage
        db = self._open_store()
        self.metrics.set("relay_start_time_seconds", self.started)
        self.metrics.set("relay_process_info", 1, process=self.process_id, pid=str(os.getpid()))
        signals = GroupSignals()
        try:
            try:
                with explained(self.data_dir / admintoken.TOKEN_FILE, self.data_dir):
                    token = self._admin_token()
                tls: ssl.SSLContext | None = (
                    server_context(server.tls_cert, server.tls_key) if server.tls else None
                )
            except admintoken.TokenError as exc:
                token_path = self.data_dir / admintoken.TOKEN_FILE
                raise StartupError(token_problem(exc, token_path, self.data_dir)) from None
            except TlsError as exc:
                raise StartupError(str(exc)) from None
            public_listeners = await _listen(server.listen, reuse_port=server.reuse_port)
            admin_listeners = await _listen(server.admin_listen)
            listen = _host_port(public_listeners[0])
            base = server.base_url(listen)
            if not server.public_url and split_host_port(server.listen)[0] in ("0.0.0.0", "::", ""):
                # Addresses would name 0.0.0.0, which no client can dial.
                log.warning(
                    "config.public_url_missing",
                    reason="listening on all interfaces without server.public_url; "
                    "set it to the URL clients reach this relay at",
                )
            service = GroupService(
                db=db,
                identity=self.identity,
                policy=self._policy,
                public_base=base,
                metrics=self.metrics,
                profiles=VerifiedProfiles(storage.verified_profiles_bytes, self.bounds),
                budgets=self.budgets,
                signals=signals,
                log_keep=storage.service_log_max,
                max_closed=storage.max_closed_groups,
                clock=self.clock,
            )
            # The join path (relay.server.signals tells how a held request travels): intake and
            # worker share how a decision is recorded, and talk only through the signals.
            decisions = Decisions(self.config.members, self.bounds, log_keep=storage.service_log_max)
            admissions = Admissions(
                service,
                self.config.members,
                self.metrics,
                signals=signals,
                decisions=decisions,
                max_waiters=server.max_connections,
            )
            worker = JoinWorker(
                service, self.config.members, self.metrics, signals=signals, decisions=decisions
            )
            channels = Channels(service, self.config.events, self.metrics, self.bounds)
            timelines = Timelines(channels, self.config.groups, self.metrics, self.bounds)
            bus = None
            if storage.url:  # other processes may share the database: the fleet bus links them
                from relay.server.fleet import FleetBus

                bus = FleetBus(
                    storage.url, process=self.process_id, signals=signals, channels=channels, worker=worker
                )
            public = PublicEndpoint(
                service,
                admissions,
                server,
                self.metrics,
                channels=channels,
                timelines=timelines,
                bounds=self.bounds,
                log_client_ip=self.config.logging.log_client_ip,
            )
            public.tls = tls
            sweeper = Sweeper(
                server,
                fanout=channels.fanout,
                buffers=public.buffers,
                sources=public.sources,
                metrics=self.metrics,
                bounds=self.bounds,
                open_connections=lambda: public.open_connections,
            )
            admin = self._admin = AdminEndpoint(
                service,
                self.metrics,
                lambda: self.ready is not None,
                server.handshake_timeout,
                token=token,
                backup_dir=self.data_dir / (storage.backup_dir or BACKUP_DIR),
                admin_hosts=server.admin_hosts,
                open_connections=lambda: public.open_connections,
                started=self.started,
            )
            self.parts = Parts(db, service, admissions, worker, channels, public, sweeper, admin)
            async with trio.open_nursery() as db_nursery:
                await db_nursery.start(db.serve)
                # In the outermost nursery: the heartbeat goes on while connections drain.
                db_nursery.start_soon(self.notifier.watchdog)
                # The worker stops after the connections and before the writer: its last
                # transaction still commits.
                workers = await db_nursery.start(_own_nursery)
                if bus is not None:
                    await workers.start(bus.run)
                await workers.start(worker.run)
                workers.start_soon(channels.run_pruner)
                workers.start_soon(timelines.run_pruner)
                async with trio.open_nursery() as connections:
                    public.helpers = connections
                    async with trio.open_nursery() as acceptors:
                        for listener in public_listeners:
                            acceptors.start_soon(
                                partial(
                                    accept.serve,
                                    listener,
                                    admit=public.admit,
                                    handler=public.handle,
                                    nursery=connections,
                                    bounds=self.bounds,
                                )
                            )
                        for listener in admin_listeners:
                            acceptors.start_soon(
                                partial(
                                    accept.serve,
                                    listener,
                                    admit=_admit_operator,
                                    handler=_operator_handler(admin),
                                    nursery=connections,
                                    bounds=self.bounds,
                                )
                            )
                        acceptors.start_soon(service.run_activation_sweep)
                        acceptors.start_soon(sweeper.run)
                        self.ready = ReadyInfo(
                            address=contact_address(base, self.identity.fingerprint),
                            listen=listen,
                            admin_listen=_host_port(admin_listeners[0]),
                        )
                        with explained(self.data_dir / RUN_FILE, self.data_dir):
                            self._write_run_file(self.ready)
                        log.info(
                            "relay.ready",
                            address=self.ready.address,
                            listen=self.ready.listen,
                            admin_listen=self.ready.admin_listen,
                            pid=os.getpid(),
                            process=self.process_id,
                        )
                        self.notifier.ready(f"serving on {self.ready.listen}")
                        task_status.started(self.ready)
                        await self._stop.wait()
                        log.info("relay.stopping", open_connections=public.open_connections)
                        self.notifier.stopping()
                        acceptors.cancel_scope.cancel()
                        public.drain()
                    connections.cancel_scope.deadline = trio.current_time() + server.shutdown_grace
                workers.cancel_scope.cancel()
                db_nursery.cancel_scope.cancel()
        finally:
            db.close()
            self._remove_run_file()
        log.info("relay.stopped")

    def _open_store(self) -> Store:
        storage = self.config.storage
        try:
            with explained(self.data_dir / DB_FILE, self.data_dir):
                return open_store(
                    url=storage.url,
                    path=self.data_dir / DB_FILE,
                    synchronous=storage.synchronous,
                    max_pending=storage.max_pending_writes,
                    on_commit=self._observe_commit,
                    read_connections=storage.read_connections,
                )
        except StoreError as exc:  # PostgreSQL's (SQLite's are told by ``explained``)
            raise StartupError(f"cannot use the database {redacted(storage.url)}: {exc}") from None

    def _observe_commit(self, seconds: float, jobs: int) -> None:
        self.metrics.observe("relay_db_commit_seconds", seconds)
        self.metrics.observe("relay_db_batch_size", jobs)
        self.bounds.flush()  # bounds hit inside the transactions just committed

    def _write_run_file(self, ready: ReadyInfo) -> None:
        path = self.data_dir / RUN_FILE
        # A temporary name of this process's own: the processes of a fleet write at once, and
        # the rename makes the last one's file whole (they name the same address).
        tmp = path.with_name(f".{RUN_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        tmp.write_text(json.dumps({**ready.__dict__, "pid": os.getpid(), "started": int(time.time())}))
        tmp.replace(path)

    def _remove_run_file(self) -> None:
        """SQLite: the one relay of the folder stops.  A fleet: only the file this process
        wrote goes (another process's stays, and names a process that still runs)."""
        path = self.data_dir / RUN_FILE
        if self.shared_data_dir:
            try:
                if json.loads(path.read_text()).get("pid") != os.getpid():
                    return
            except (OSError, ValueError, AttributeError):
                return
        path.unlink(missing_ok=True)
