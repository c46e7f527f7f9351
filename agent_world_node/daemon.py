"""Process entry point of ``awnode start``: logging, signals, and the trio run of one ``Node``."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import trio

from . import config as cfg
from .logsetup import configure_logging

if TYPE_CHECKING:
    from .node import Node

log = structlog.get_logger(__name__)


async def _run_until_signal(node: "Node") -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)

            async def _wait_signal() -> None:
                async for signum in signals:
                    log.info("node_stopping", signal=signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(_wait_signal)


def run_node(home: Path, peers: list[str] | None = None) -> None:
    """Run the node whose home is ``home`` until SIGINT or SIGTERM, then stop cleanly.

    ``peers`` (full /p2p/ multiaddrs) replaces the peers of ``config.toml`` when given.
    Raises ``config.ConfigError`` for a missing or invalid home and ``execution.ExecutionError``
    when stored state cannot be restored.
    """
    h = cfg.Home(home)
    config = cfg.read_config(h.config_file)
    configure_logging(config.log_format)
    from .node import Node

    node = Node(h, peers)
    trio.run(_run_until_signal, node)
