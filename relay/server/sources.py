"""Where a connection comes from, as the key of its source's budgets.

A source is the client's IPv4 address, or the /64 (by default) its IPv6 address is in:
one host, or one customer's network, gets one budget for connections, connection
rate and invitations, however many addresses it can pick inside its prefix.  An
IPv4 address mapped into IPv6 (``::ffff:a.b.c.d``) is its IPv4 address.

Must not: log or store a source key anywhere an operator would not expect a client
address (it *is* a client address; docs/security.md).  Pure: no sockets, no trio.
"""

from __future__ import annotations

import ipaddress

UNKNOWN = "unknown"


def source_key(address: str, ipv6_prefix: int = 64) -> str:
    """The budget key of a peer address: ``"203.0.113.7"``, or ``"2001:db8:1:2::/64"``."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return UNKNOWN
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))
    return str(ip)
