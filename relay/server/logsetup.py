"""structlog configuration, done once at start-up: one JSON object per line on stdout.

The rest of the code only does ``structlog.get_logger(...)`` and logs events
with stable names; per-task ids (connection, group, request) are bound with
``structlog.contextvars``.  Client IP addresses and whole keys are never logged
unless the operator turns ``logging.log_client_ip`` on.

What the relay's dependencies log through the stdlib ``logging`` module (and Python's
warnings) goes through the same JSON renderer, as the event ``library.log``: stdout
never gets a line that is not one JSON object.
"""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _ToStructlog(logging.Handler):
    """A stdlib ``logging`` record as one JSON ``library.log`` event (never a raw line)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log = structlog.get_logger("relay.library")
            fields: dict[str, object] = {"logger": record.name, "message": record.getMessage()}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            # Literal event names, one call per level (tests/test_logging.py reads them).
            if record.levelno >= logging.ERROR:
                log.error("library.log", **fields)
            elif record.levelno >= logging.WARNING:
                log.warning("library.log", **fields)
            elif record.levelno >= logging.INFO:
                log.info("library.log", **fields)
            else:
                log.debug("library.log", **fields)
        except Exception:  # as logging.Handler does: a failure to log never breaks the caller
            self.handleError(record)


def configure(level: str = "info") -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_ToStructlog())
    root.setLevel(_LEVELS[level])
    logging.captureWarnings(True)  # warnings.warn goes through logging, so through the JSON renderer
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
