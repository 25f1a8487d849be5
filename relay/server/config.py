"""The relay's configuration: ``relay.toml`` decoded into typed, validated structs.

Unknown keys and wrong types are errors that name the key (msgspec reports the
path, e.g. ``policy.max_owners``); every error is collected, key by key, so
``relay config check`` can list them all.  ``RELAY_<SECTION>_<KEY>`` environment
variables override the file (``envconfig.py`` reads them) and go through the
same validation.  Defaults here are the documented defaults of
``config/relay.toml``.  Reading files is the only I/O; nothing is started.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from relay.protocol.profile import ProfilePolicy
from relay.store.pgurl import is_postgres_url, redacted

PositiveSeconds = Annotated[float, Meta(gt=0)]
# A DNS name as a Host header names it (no port): letters, digits, '-', '.'.
_HOST_NAME = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?")


def _is_host(text: str) -> bool:
    """A DNS name or an IP address (IPv6 with or without brackets), with no port."""
    try:
        ipaddress.ip_address(text.removeprefix("[").removesuffix("]"))
    except ValueError:
        return bool(_HOST_NAME.fullmatch(text))
    return True


class ServerConfig(Struct, forbid_unknown_fields=True, frozen=True):
    listen: str = "127.0.0.1:7300"
    admin_listen: str = "127.0.0.1:7301"
    public_url: str = ""
    max_connections: Annotated[int, Meta(ge=1)] = 10_000
    max_frame_bytes: Annotated[int, Meta(ge=1024, le=16 * 1024 * 1024)] = 256 * 1024
    handshake_timeout: PositiveSeconds = 10.0
    idle_timeout: PositiveSeconds = 120.0
    shutdown_grace: PositiveSeconds = 10.0
    requests_per_second: PositiveSeconds = 20.0
    request_burst: Annotated[int, Meta(ge=1)] = 40
    # TCP keepalive on public connections: the kernel's probes find a peer that vanished without
    # a word and keep NAT mappings open (WebSocket pings, below, find a peer that stopped
    # answering).  0: off.
    tcp_keepalive: Annotated[int, Meta(ge=0, le=86_400)] = 60
    # TLS on the public port (PEM files, both or neither): addresses become https://, clients
    # use wss://.  Read once at start (a restart picks up a renewed certificate).
    tls_cert: str = ""
    tls_key: str = ""
    # Host names (besides loopback and the port's own address) the operator port answers to.
    admin_hosts: list[str] = msgspec.field(default_factory=list)

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    def base_url(self, listen: str) -> str:
        """The base of every address handed out: ``public_url``, else the scheme and ``listen``."""
        return self.public_url.rstrip("/") or f"{'https' if self.tls else 'http'}://{listen}"

    # Budgets per source (an IPv4 address, or the IPv6 prefix of ``ipv6_prefix`` bits).
    max_connections_per_ip: Annotated[int, Meta(ge=1)] = 256
    connections_per_ip_per_second: PositiveSeconds = 20.0
    connection_burst_per_ip: Annotated[int, Meta(ge=1)] = 100
    requests_per_ip_per_second: PositiveSeconds = 200.0
    request_burst_per_ip: Annotated[int, Meta(ge=1)] = 400
    ipv6_prefix: Annotated[int, Meta(ge=16, le=128)] = 64
    # Subscribed sessions: pinged after ``ping_interval`` seconds of silence, closed when nothing
    # comes back within ``pong_timeout``.
    ping_interval: PositiveSeconds = 60.0
    pong_timeout: PositiveSeconds = 30.0
    # A WebSocket message started must be complete within ``message_timeout`` seconds; the bytes
    # of partly received messages, over all connections, are bounded by ``max_buffered_bytes``.
    message_timeout: PositiveSeconds = 10.0
    max_buffered_bytes: Annotated[int, Meta(ge=1024 * 1024)] = 64 * 1024 * 1024
    # SO_REUSEPORT on the public port: several processes of one fleet (PostgreSQL only) share it,
    # the kernel spreads new connections over them (``relay serve --processes N`` sets it).
    reuse_port: bool = False


class PolicyConfig(Struct, forbid_unknown_fields=True, frozen=True):
    kinds: list[Literal["channel", "group"]] = msgspec.field(default_factory=lambda: ["channel", "group"])
    max_name_length: Annotated[int, Meta(ge=1)] = 64
    max_description_length: Annotated[int, Meta(ge=0)] = 1024
    deny_patterns: list[str] = msgspec.field(default_factory=list)
    max_owners: Annotated[int, Meta(ge=1)] = 16
    max_groups: Annotated[int, Meta(ge=0)] = 100_000
    approval: Literal["auto", "manual"] = "auto"
    activation_timeout: Annotated[int, Meta(ge=1)] = 3600
    invitation_max_age: Annotated[int, Meta(ge=1)] = 600
    # Budgets per source (an IPv4 address or an IPv6 /64; relay.server.pending).
    invitations_per_ip_per_minute: Annotated[float, Meta(gt=0)] = 30.0
    max_pending_groups_per_ip: Annotated[int, Meta(ge=1)] = 10

    def to_policy(self) -> ProfilePolicy:
        return ProfilePolicy(
            kinds=tuple(self.kinds),
            max_name_length=self.max_name_length,
            max_description_length=self.max_description_length,
            deny_patterns=tuple(self.deny_patterns),
            max_owners=self.max_owners,
            max_groups=self.max_groups,
            approval=self.approval,
            activation_timeout=self.activation_timeout,
            invitation_max_age=self.invitation_max_age,
        )


class StorageConfig(Struct, forbid_unknown_fields=True, frozen=True):
    # PostgreSQL instead of the SQLite file DATA/relay.db (relay.store.postgres): a libpq URL,
    # postgresql://USER[:PASSWORD]@HOST[:PORT]/DB.  Empty: SQLite.
    url: str = ""
    synchronous: Literal["NORMAL", "FULL", "EXTRA"] = "FULL"
    service_log_max: Annotated[int, Meta(ge=10)] = 1000
    max_pending_writes: Annotated[int, Meta(ge=1)] = 10_000
    # Read-only connections beside the writer (listings, stats, heads, discovery).
    read_connections: Annotated[int, Meta(ge=1, le=64)] = 4
    max_closed_groups: Annotated[int, Meta(ge=0)] = 100_000
    # Stored profiles kept verified in memory (relay.server.profiles), in bytes.
    verified_profiles_bytes: Annotated[int, Meta(ge=64 * 1024)] = 32 * 1024 * 1024
    # Where ``relay admin backup`` may write: empty means DATA/backups; relative, below DATA.
    backup_dir: str = ""


class MembersConfig(Struct, forbid_unknown_fields=True, frozen=True):
    max_profile_bytes: Annotated[int, Meta(ge=16, le=65536)] = 1024
    max_per_group: Annotated[int, Meta(ge=1)] = 1_000_000
    max_queued_per_group: Annotated[int, Meta(ge=1)] = 50_000
    max_refused_per_group: Annotated[int, Meta(ge=0)] = 10_000
    max_request_age: Annotated[int, Meta(ge=1)] = 7 * 24 * 3600
    max_attempts: Annotated[int, Meta(ge=1)] = 5
    retry_base: PositiveSeconds = 1.0
    retry_max: PositiveSeconds = 300.0
    worker_slice: Annotated[int, Meta(ge=1, le=10_000)] = 64
    max_status_wait: Annotated[float, Meta(ge=0)] = 60.0


class EventsConfig(Struct, forbid_unknown_fields=True, frozen=True):
    """Channel traffic: owner events, retention, fan-out buffers, direct invitations."""

    max_body_bytes: Annotated[int, Meta(ge=16, le=65536)] = 65536
    max_backdate: Annotated[int, Meta(ge=0)] = 3600
    # Retention per group: the oldest events go first; the newest is always kept.
    max_events: Annotated[int, Meta(ge=1)] = 100_000
    max_age: Annotated[int, Meta(ge=1)] = 30 * 24 * 3600
    max_bytes: Annotated[int, Meta(ge=1024)] = 256 * 1024 * 1024
    prune_interval: PositiveSeconds = 60.0
    history: Annotated[int, Meta(ge=0, le=100_000)] = 100
    # Per member connection: frames (and bytes) queued before the member is dropped to catch-up.
    send_buffer_frames: Annotated[int, Meta(ge=1)] = 1024
    send_buffer_bytes: Annotated[int, Meta(ge=1024)] = 4 * 1024 * 1024
    stall_timeout: PositiveSeconds = 30.0
    catch_up_page: Annotated[int, Meta(ge=1, le=10_000)] = 256
    recent_cache: Annotated[int, Meta(ge=0, le=100_000)] = 256
    posts_per_second: PositiveSeconds = 5000.0
    post_burst: Annotated[int, Meta(ge=1)] = 10_000
    max_subscribers: Annotated[int, Meta(ge=1)] = 100_000
    max_subscribers_per_group: Annotated[int, Meta(ge=1)] = 100_000
    max_equivocations_per_group: Annotated[int, Meta(ge=1)] = 100
    inbox_max: Annotated[int, Meta(ge=1)] = 100
    inbox_ttl: Annotated[int, Meta(ge=1)] = 7 * 24 * 3600
    discover_per_second: PositiveSeconds = 2.0
    discover_burst: Annotated[int, Meta(ge=1)] = 10
    # Concurrent subscriptions of one member key to one group, over all connections.
    max_subscriptions_per_member: Annotated[int, Meta(ge=1)] = 4


class GroupsConfig(Struct, forbid_unknown_fields=True, frozen=True):
    """Member messages in groups (and channels with comments): the relay's floor under the
    owners' signed limits.  Retention and fan-out follow ``[events]``."""

    # The largest member message body; the profile's max_message_bytes may only lower it.
    max_message_bytes: Annotated[int, Meta(ge=16, le=65536)] = 16384
    # Per member, per process; the profile's messages_per_minute may only lower it.
    messages_per_minute: Annotated[int, Meta(ge=1, le=100_000)] = 30
    # Members whose pace is remembered at once (the least recently seen is forgotten).
    pacer_members: Annotated[int, Meta(ge=1)] = 100_000


class LoggingConfig(Struct, forbid_unknown_fields=True, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    log_client_ip: bool = False


class Config(Struct, forbid_unknown_fields=True, frozen=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    policy: PolicyConfig = msgspec.field(default_factory=PolicyConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    members: MembersConfig = msgspec.field(default_factory=MembersConfig)
    events: EventsConfig = msgspec.field(default_factory=EventsConfig)
    groups: GroupsConfig = msgspec.field(default_factory=GroupsConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)


class ConfigError(Exception):
    """A configuration that cannot be used; each error names the key (and its source) and why."""

    def __init__(self, errors: list[str] | str) -> None:
        self.errors = [errors] if isinstance(errors, str) else errors
        super().__init__("; ".join(self.errors))


def problems(config: Config) -> list[tuple[str, str]]:
    """Checks msgspec cannot express (addresses, patterns), as ``(section.key, reason)``."""
    from relay.protocol.addresses import parse_base
    from relay.protocol.errors import ProtocolError

    found: list[tuple[str, str]] = []
    bound: list[tuple[str, int]] = []
    for key in ("listen", "admin_listen"):
        try:
            bound.append(split_host_port(getattr(config.server, key)))
        except ConfigError as exc:
            found.append((f"server.{key}", str(exc)))
    if len(bound) == 2 and same_socket(*bound):
        found.append(
            (
                "server.admin_listen",
                f"{config.server.admin_listen!r} takes the port of server.listen ({config.server.listen!r}): "
                "the public and the operator port need two ports (or two addresses that do not overlap)",
            )
        )
    if config.server.public_url:
        try:
            parse_base(config.server.public_url)
        except ProtocolError as exc:
            found.append(
                ("server.public_url", f"{exc.reason} (the URL clients reach this relay's public port at)")
            )
    if config.storage.url and not is_postgres_url(config.storage.url):
        shown = redacted(config.storage.url)
        found.append(("storage.url", f"{shown!r} is not a PostgreSQL URL (postgresql://USER@HOST:PORT/DB)"))
    server = config.server
    if server.reuse_port and not config.storage.url:
        found.append(
            (
                "server.reuse_port",
                "true needs storage.url (PostgreSQL): processes sharing the port on one SQLite file "
                "would each believe their own answers",
            )
        )
    if bool(server.tls_cert) != bool(server.tls_key):
        missing = "server.tls_key" if server.tls_cert else "server.tls_cert"
        found.append((missing, "set server.tls_cert and server.tls_key together (both or neither)"))
    if server.tls and server.public_url.startswith("http:"):
        found.append(
            (
                "server.public_url",
                "http:// while the public port speaks TLS (server.tls_cert): clients would dial "
                "ws:// and fail; use https://",
            )
        )
    for index, host in enumerate(server.admin_hosts):
        if not _is_host(host):
            reason = f"{host!r} is not a host name (no port, no scheme)"
            found.append((f"server.admin_hosts[{index}]", reason))
    if server.max_buffered_bytes < server.max_frame_bytes:
        found.append(
            (
                "server.max_buffered_bytes",
                f"{server.max_buffered_bytes} is below server.max_frame_bytes ({server.max_frame_bytes}): "
                "no message of the largest size allowed could ever be received",
            )
        )
    for index, pattern in enumerate(config.policy.deny_patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            found.append((f"policy.deny_patterns[{index}]", f"not a regular expression: {exc}"))
    return found


def validate(config: Config) -> Config:
    """Raises :class:`ConfigError` naming every key :func:`problems` finds."""
    found = problems(config)
    if found:
        raise ConfigError([f"{key}: {reason}" for key, reason in found])
    return config


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """The file (if any) with ``RELAY_*`` environment overrides, validated; else ConfigError."""
    config, errors, _ = check_config(path, os.environ if environ is None else environ)
    if config is None:
        raise ConfigError(errors)
    return config


def check_config(path: Path | None, environ: Mapping[str, str]) -> tuple[Config | None, list[str], list[str]]:
    """Every error found in the file and the environment, not only the first.

    Returns ``(config or None, errors, variables used)``.  Precedence: environment over
    file over defaults (command-line flags are applied by the caller, over all).
    """
    from relay.server.envconfig import read_env

    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            return None, [f"{path}: {exc.strerror}"], []
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            return None, [f"{path}: not valid TOML: {exc}"], []
    env, sources, errors = read_env(environ, Config)

    def where(section: str, key: str) -> str:
        return sources.get((section, key)) or str(path)

    sections = {name: type(getattr(Config(), name)) for name in Config.__struct_fields__}
    for section, values in data.items():
        if section not in sections:
            errors.append(f"{path}: unknown section [{section}]")
        elif not isinstance(values, dict):
            errors.append(f"{path}: `{section}` must be a [{section}] table")
    merged: dict[str, dict[str, Any]] = {}
    for name in sections:
        from_file = data.get(name)
        merged[name] = {**(from_file if isinstance(from_file, dict) else {}), **env.get(name, {})}
    for section, values in merged.items():
        struct = sections[section]
        for key, value in list(values.items()):
            error = _check_key(struct, section, key, value)
            if error is not None:
                errors.append(f"{where(section, key)}: {error}")
                del values[key]  # checked without it below, so later problems are found too
    config = msgspec.convert(merged, Config)
    for key, reason in problems(config):
        section, _, name = key.partition(".")
        source = sources.get((section, name.split("[")[0]))
        errors.append(f"{source}: {key}: {reason}" if source else f"{key}: {reason}")
    return (None if errors else config), errors, sorted(sources.values())


def _check_key(struct: type[msgspec.Struct], section: str, key: str, value: object) -> str | None:
    """Why ``section.key = value`` is refused, or None; one key at a time, so all are reported."""
    if key not in struct.__struct_fields__:
        close = difflib.get_close_matches(key, struct.__struct_fields__, n=1)
        hint = f" (did you mean `{section}.{close[0]}`?)" if close else ""
        return f"unknown option `{section}.{key}`{hint}"
    try:
        msgspec.convert({key: value}, struct)
    except msgspec.ValidationError as exc:
        return str(exc).replace("`$.", f"`{section}.")
    return None


def _addresses(host: str) -> set[str]:
    """What a listen host binds, as comparable text: IP addresses in one form, ``localhost`` as
    its two loopback addresses, any other name as itself (no DNS lookup here)."""
    if host.lower() == "localhost":
        return {"127.0.0.1", "::1"}
    try:
        return {str(ipaddress.ip_address(host))}
    except ValueError:
        return {host.lower().rstrip(".")}


def _overlap(a: str, b: str) -> bool:
    if a == b:
        return True
    for wildcard, other in ((a, b), (b, a)):
        try:
            ip = ipaddress.ip_address(other)
        except ValueError:
            continue
        # 0.0.0.0 takes the port on every IPv4 address, :: on every IPv6 one (trio binds IPv6
        # listeners IPv6-only).
        if wildcard == "0.0.0.0" and ip.version == 4:
            return True
        if wildcard == "::" and ip.version == 6:
            return True
    return False


def same_socket(first: tuple[str, int], second: tuple[str, int]) -> bool:
    """Whether two listen addresses would take the same port on some address (port 0, "any
    free port", never collides)."""
    (host_a, port_a), (host_b, port_b) = first, second
    if port_a != port_b or port_a == 0:
        return False
    return any(_overlap(a, b) for a in _addresses(host_a) for b in _addresses(host_b))


def split_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise ConfigError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)
