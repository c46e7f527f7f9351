"""Forward py-libp2p's standard-library log records to structlog.

py-libp2p configures its ``libp2p`` logger with ``propagate=False`` and no handler unless
``LIBP2P_DEBUG`` is set, so its warnings (dropped subscription messages, dial errors) are invisible
(measured with 0.8.1). ``install_libp2p_log_bridge`` attaches one handler that
re-emits each record as a structlog event ``libp2p_log`` with fields ``logger`` and ``text`` (and
``error`` when the record carries an exception), at the record's level, except the routine
records listed in ``ROUTINE_RECORDS`` which are demoted to debug.

A hostile or merely unusual peer can make py-libp2p log one line per message it sends (a peer
subscribed to some topics only fills "pending message queue" warnings: thousands a minute). So
records above debug are rate-limited per (logger, message template): at most ``BURST`` in each
``WINDOW_S`` seconds; the rest are counted and reported once per window as
``libp2p_log_suppressed {logger, template, count}``. Logs only: nothing here touches consensus.
"""

from __future__ import annotations

import logging
import threading
import time

import structlog

#: Records forwarded per (logger, template) and window; the window length in seconds.
BURST = 5
WINDOW_S = 10.0

#: Records that py-libp2p logs at ERROR for routine events the network layer already handles and
#: logs itself (a peer that is down, a stream to a peer that is disconnecting): (logger name
#: prefix, message prefix). They are forwarded at debug level instead, so that an unreachable peer
#: does not print an error every reconnect interval.
ROUTINE_RECORDS: tuple[tuple[str, str], ...] = (
    ("libp2p.transport.tcp", "Failed to open TCP stream"),
    ("libp2p.host.basic_host", "Failed to open stream to peer"),
    ("libp2p.protocol_muxer.multiselect_client", "MultiselectClient handshake"),
    ("libp2p.network.swarm", "[ADDCONN_FAIL]"),
)


def is_routine(record: logging.LogRecord) -> bool:
    """Return True if ``record`` is one of ``ROUTINE_RECORDS`` (forwarded at debug level)."""
    text = record.getMessage()
    return any(record.name.startswith(name) and text.startswith(prefix) for name, prefix in ROUTINE_RECORDS)


class StructlogForwardingHandler(logging.Handler):
    """A ``logging.Handler`` that re-emits records through structlog (event ``libp2p_log``), at
    most ``BURST`` per (logger, template) and ``WINDOW_S`` window above debug (see the module
    docstring); ``clock`` (seconds, monotonic) is for tests."""

    def __init__(self, level: int = logging.NOTSET, clock: object = time.monotonic) -> None:
        super().__init__(level)
        self._clock = clock
        self._windows: dict[tuple[str, str], list[float]] = {}  # key -> [window start, forwarded, dropped]
        self._windows_lock = threading.Lock()

    def _admit(self, record: logging.LogRecord) -> bool:
        """Count ``record`` in its window; False when it is over the burst (suppressed)."""
        key = (record.name, str(record.msg)[:120])
        now = self._clock()  # type: ignore[operator]
        with self._windows_lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= WINDOW_S:
                if window is not None and window[2]:
                    structlog.get_logger("libp2p").warning(
                        "libp2p_log_suppressed", logger=key[0], template=key[1], count=int(window[2]))
                if len(self._windows) > 1000:
                    self._windows.clear()
                self._windows[key] = window = [now, 0.0, 0.0]
            if window[1] < BURST:
                window[1] += 1
                return True
            window[2] += 1
            return False

    def emit(self, record: logging.LogRecord) -> None:
        """Forward ``record``; a formatting error is reported by ``handleError``, never raised."""
        try:
            level = logging.DEBUG if is_routine(record) else record.levelno
            if level > logging.DEBUG and not self._admit(record):
                return
            text = record.getMessage()
            fields: dict[str, object] = {"logger": record.name, "text": text}
            if record.exc_info and record.exc_info[1] is not None:
                fields["error"] = repr(record.exc_info[1])
            # A fresh logger per record: structlog may be (re)configured at any time, and a cached
            # logger would keep the configuration of its first use.
            _log = structlog.get_logger("libp2p")
            if level >= logging.ERROR:
                _log.error("libp2p_log", **fields)
            elif level >= logging.WARNING:
                _log.warning("libp2p_log", **fields)
            elif level >= logging.INFO:
                _log.info("libp2p_log", **fields)
            else:
                _log.debug("libp2p_log", **fields)
        except Exception:
            self.handleError(record)


def install_libp2p_log_bridge(level: int = logging.WARNING) -> StructlogForwardingHandler:
    """Attach (once per process) a ``StructlogForwardingHandler`` to the ``libp2p`` logger.

    ``level``: the lowest standard-library level forwarded (default WARNING; libp2p's DEBUG output
    is very chatty). Returns the installed handler; calling again returns the same handler and only
    updates the level.
    """
    logger = logging.getLogger("libp2p")
    for handler in logger.handlers:
        if isinstance(handler, StructlogForwardingHandler):
            handler.setLevel(level)
            if logger.level == logging.NOTSET or logger.level > level:
                logger.setLevel(level)
            return handler
    handler = StructlogForwardingHandler(level=level)
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    return handler
