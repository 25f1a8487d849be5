"""Benchmarks for chat-relay, run with ``python -m benchmarks`` (see ``benchmarks/README.md``).

They drive the real ``relay serve`` daemon as a subprocess on loopback, with the real owner
client, and print a table: invitations accepted per second against a bare WebSocket round-trip
baseline measured in the same run, and the growth of the relay's memory and database per group.
Nothing here is collected by pytest (the test suite lives in ``tests/``).
"""
