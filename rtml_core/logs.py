"""Logging of rtml's long-running processes (the stream sidecar, ingest, archive)."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str = "INFO", *, json_logs: bool | None = None) -> None:
    """Structured logs on stderr: JSON lines when not on a terminal (or when asked), else readable."""
    import structlog

    if json_logs is None:
        json_logs = not sys.stderr.isatty()
    renderer = structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping().get(level.upper(), 20)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        # not cached: no hot path logs per event, and a later configure (tests' capture_logs,
        # a second command in the same process) must reach loggers already used
        cache_logger_on_first_use=False,
    )
