"""The trio daemon: listeners, sessions, the operator API and the service logic.

Owns all I/O of the relay side; rules come from ``relay.protocol`` and rows
from ``relay.store``.
"""
