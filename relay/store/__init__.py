"""SQLite storage: the group-commit writer, numbered migrations and the group rows.

Storage stores; it never decides.  Policy and state rules live in
``relay.protocol`` and are applied by ``relay.server``.
"""
