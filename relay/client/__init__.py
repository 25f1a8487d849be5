"""The client library: what owners, members and operators use to talk to relays.

Public surface: :class:`OwnerState`, :func:`create_channel`, :func:`add_relay`,
:func:`publish`, :func:`remove_relay`, :func:`read_log`, :class:`AdminClient`, the group calls
(:func:`post_message`, :func:`certify`, :func:`moderate`, :func:`set_role`,
:func:`member_moderate`), and the exception hierarchy rooted at :class:`RelayError`.  It
never imports the server.  The names are loaded when first used (PEP 562), so that a command
that only reads a file does not load the network libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relay.client.admin import AdminClient
    from relay.client.errors import (
        RelayError,
        RelayIdentityError,
        RelayProtocolError,
        RelayRefused,
        RelayUnreachable,
    )
    from relay.client.memberpost import post_message
    from relay.client.moderation import certify, member_moderate, moderate, set_role
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

_WHERE = {
    "AdminClient": "relay.client.admin",
    "RelayError": "relay.client.errors",
    "RelayIdentityError": "relay.client.errors",
    "RelayProtocolError": "relay.client.errors",
    "RelayRefused": "relay.client.errors",
    "RelayUnreachable": "relay.client.errors",
    "AddRelayResult": "relay.client.owner",
    "OwnerState": "relay.client.owner",
    "PublishResult": "relay.client.owner",
    "add_relay": "relay.client.owner",
    "create_channel": "relay.client.owner",
    "publish": "relay.client.owner",
    "read_log": "relay.client.owner",
    "remove_relay": "relay.client.owner",
    "post_message": "relay.client.memberpost",
    "certify": "relay.client.moderation",
    "moderate": "relay.client.moderation",
    "set_role": "relay.client.moderation",
    "member_moderate": "relay.client.moderation",
}

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
    "certify",
    "create_channel",
    "member_moderate",
    "moderate",
    "post_message",
    "publish",
    "read_log",
    "remove_relay",
    "set_role",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'relay.client' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
