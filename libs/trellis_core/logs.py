"""structlog set-up: JSON lines in production, a console renderer on a TTY; context is bound."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from trellis_core.settings import Settings

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(settings: Settings, *, stream: Any = None) -> None:
    """Configure structlog once per process from settings (level, json or console)."""
    out = stream if stream is not None else sys.stderr
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "console" if getattr(out, "isatty", lambda: False)() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=True)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[settings.log_level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str, **context: Any) -> Any:
    """A logger with `component` and any context (tenant, run, activity) bound.

    Lazy: module-level loggers made at import time still follow `configure()` called later
    (`.bind()` here would freeze the default configuration into them)."""
    return structlog.get_logger(name, component=name, **context)
