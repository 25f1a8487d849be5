"""The pure protocol core: wire types, crypto, addresses, profile and owner-chain rules,
the group state machine and per-connection rules.

Nothing in this package imports trio, sqlite3 or reads the clock: callers pass
bytes and ``now`` in and get typed values or a :class:`ProtocolError` out.
"""

from relay.protocol.errors import (
    ErrorCode,
    LocalProtocolError,
    PolicyRefusal,
    ProtocolError,
    RemoteProtocolError,
)

__all__ = [
    "ErrorCode",
    "LocalProtocolError",
    "PolicyRefusal",
    "ProtocolError",
    "RemoteProtocolError",
]
