"""structlog configuration, done once at start-up: one JSON object per line on stdout.

The rest of the code only does ``structlog.get_logger(...)`` and logs events
with stable names; per-task ids (connection, group, request) are bound with
``structlog.contextvars``.  Client IP addresses and whole keys are never logged
unless the operator turns ``logging.log_client_ip`` on.
"""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str = "info") -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
