"""Structured logging (structlog): one JSON object per line in production, readable console output
in a terminal. Every event has a name plus fields (height=, round=, peer=), never values in text."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(fmt: str = "auto", level: int = logging.INFO) -> None:
    """Configure structlog for the process. ``fmt``: "json", "console", or "auto" (console when
    stderr is a terminal, JSON otherwise). Raises ValueError for another ``fmt``."""
    if fmt not in ("auto", "json", "console"):
        raise ValueError(f"log_format must be auto, json or console, not {fmt!r}")
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer = structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries that log through the standard library (hypercorn, libp2p) go to stderr too.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
