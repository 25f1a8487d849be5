"""chat-relay: a standalone relay daemon for owner-signed channels.

The package is split so that rules never depend on I/O: ``relay.protocol`` is
pure (no trio, no sqlite, no clock), ``relay.store`` is the SQLite edge,
``relay.server`` the trio daemon and ``relay.client`` the owner/member library.
"""

__version__ = "0.1.0"
