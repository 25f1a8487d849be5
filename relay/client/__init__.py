"""The client library: what owners (and, later, members) use to talk to relays.

Public surface: :class:`OwnerState`, :func:`create_channel`, :func:`add_relay`,
:func:`publish`, :func:`remove_relay`, :func:`read_log`, :class:`AdminClient`, and the exception
hierarchy rooted at :class:`RelayError`.  It never imports the server.
"""

from relay.client.admin import AdminClient
from relay.client.errors import (
    RelayError,
    RelayIdentityError,
    RelayProtocolError,
    RelayRefused,
    RelayUnreachable,
)
from relay.client.owner import (
    AddRelayResult,
    OwnerState,
    PublishResult,
    add_relay,
    create_channel,
    publish,
    read_log,
    remove_relay,
)

__all__ = [
    "AddRelayResult",
    "AdminClient",
    "OwnerState",
    "PublishResult",
    "RelayError",
    "RelayIdentityError",
    "RelayProtocolError",
    "RelayRefused",
    "RelayUnreachable",
    "add_relay",
    "create_channel",
    "publish",
    "read_log",
    "remove_relay",
]
