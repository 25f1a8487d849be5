"""The relay's configuration: ``relay.toml`` decoded into typed, validated structs.

Unknown keys and wrong types are errors that name the key (msgspec reports the
path, e.g. ``$.policy.max_owners``).  Defaults here are the documented defaults
of ``config/relay.toml``.  Reading files is the only I/O; nothing is started.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from relay.protocol.profile import ProfilePolicy

PositiveSeconds = Annotated[float, Meta(gt=0)]


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


class PolicyConfig(Struct, forbid_unknown_fields=True, frozen=True):
    kinds: list[Literal["channel", "group"]] = msgspec.field(default_factory=lambda: ["channel", "group"])
    max_name_length: Annotated[int, Meta(ge=1)] = 64
    max_description_length: Annotated[int, Meta(ge=0)] = 1024
    deny_patterns: list[str] = msgspec.field(default_factory=list)
    max_owners: Annotated[int, Meta(ge=1)] = 16
    max_groups: Annotated[int, Meta(ge=0)] = 100_000
    approval: Literal["auto", "manual"] = "auto"
    activation_timeout: Annotated[int, Meta(ge=1)] = 7 * 24 * 3600
    invitation_max_age: Annotated[int, Meta(ge=1)] = 600

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
    synchronous: Literal["NORMAL", "FULL", "EXTRA"] = "FULL"
    service_log_max: Annotated[int, Meta(ge=10)] = 1000
    max_pending_writes: Annotated[int, Meta(ge=1)] = 10_000
    max_closed_groups: Annotated[int, Meta(ge=0)] = 100_000


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


class LoggingConfig(Struct, forbid_unknown_fields=True, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    log_client_ip: bool = False


class Config(Struct, forbid_unknown_fields=True, frozen=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    policy: PolicyConfig = msgspec.field(default_factory=PolicyConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    members: MembersConfig = msgspec.field(default_factory=MembersConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names the key and the reason."""


def validate(config: Config) -> Config:
    """Checks msgspec cannot express: addresses and patterns.  Raises :class:`ConfigError`."""
    import re

    from relay.protocol.addresses import parse_base
    from relay.protocol.errors import ProtocolError

    for key in ("listen", "admin_listen"):
        try:
            split_host_port(getattr(config.server, key))
        except ConfigError as exc:
            raise ConfigError(f"server.{key}: {exc}") from None
    if config.server.public_url:
        try:
            parse_base(config.server.public_url)
        except ProtocolError as exc:
            raise ConfigError(
                f"server.public_url: {exc.reason} (the URL clients reach this relay's public port at)"
            ) from None
    for index, pattern in enumerate(config.policy.deny_patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"policy.deny_patterns[{index}]: not a regular expression: {exc}") from None
    return config


def load_config(path: Path | None) -> Config:
    if path is None:
        return Config()
    try:
        config = msgspec.toml.decode(path.read_bytes(), type=Config)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {str(exc).replace('`$.', '`')}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return validate(config)


def split_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise ConfigError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)
