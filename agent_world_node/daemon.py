"""Process entry point of ``awnode start``: logging, signals, and the trio run of one ``Node``."""

from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import trio

from . import config as cfg
from .consensus.privval import SignStateError
from .execution import ExecutionError
from .homelock import HomeInUseError, lock_home
from .logsetup import configure_logging
from .replica.wal import WALError

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


#: Log level of the daemon: debug, info (default), warning or error.
LOG_LEVEL_ENV = "AGENT_WORLD_LOG_LEVEL"
#: When set, the daemon runs under cProfile and writes the stats to this path when it stops
#: (read them with ``python -m pstats PATH``); used to profile nodes under benchmark load.
PROFILE_ENV = "AGENT_WORLD_PROFILE"


#: Exit status of a node stopped by a full disk (BSD's EX_IOERR).
DISK_FULL_EXIT = 74


def disk_full_error(exc: BaseException) -> BaseException | None:
    """The error inside ``exc`` (itself, its exception groups' members, or its causes) that says a
    write failed for lack of space: SQLite's ``SQLITE_FULL`` or an OSError ``ENOSPC``; else None."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, sqlite3.Error) and getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return e
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return e
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    return None


#: Errors that stop a node before it runs because its home's state cannot be used as it is (the
#: message says what is wrong and what to do); ``awnode start`` prints them as one line.
HOME_STATE_ERRORS: tuple[type[Exception], ...] = (ExecutionError, WALError, SignStateError, HomeInUseError)


def check_ports_free(config: cfg.NodeConfig) -> None:
    """Raise ``config.ConfigError`` (one line: which address, and what to do) when the node's P2P
    or HTTP listen address is taken by another listening socket, before anything is loaded."""
    from multiaddr import Multiaddr

    from .network.host import ListenAddressInUseError, check_listen_address_free

    try:
        check_listen_address_free(Multiaddr(config.p2p.listen))
    except ListenAddressInUseError:
        raise cfg.ConfigError(f"p2p.listen {config.p2p.listen} is in use by another program (another node?); "
                              "stop it, or give this node another port in config.toml") from None
    except ValueError as exc:
        raise cfg.ConfigError(f"p2p.listen {config.p2p.listen!r} is not a multiaddr: {exc}") from None
    host, _, port = config.rpc.listen.rpartition(":")
    if port.isdigit() and int(port) != 0:
        import socket

        family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host.strip("[]") or "0.0.0.0", int(port)))
            except OSError:
                raise cfg.ConfigError(f"rpc.listen {config.rpc.listen} is in use by another program (another node?); "
                                      "stop it, or give this node another port in config.toml") from None


def run_node(home: Path, peers: list[str] | None = None, *, p2p_listen: str | None = None,
             rpc_listen: str | None = None) -> None:
    """Run the node whose home is ``home`` until SIGINT or SIGTERM, then stop cleanly (profiled
    with cProfile when ``AGENT_WORLD_PROFILE`` names a file). A write that fails for lack of disk
    space ends the node with one ``disk_full`` error line and exit status ``DISK_FULL_EXIT``.

    ``peers`` (full /p2p/ multiaddrs) replaces the peers of ``config.toml`` when given, and
    ``p2p_listen`` / ``rpc_listen`` its listen addresses.
    Raises ``config.ConfigError`` for a missing or invalid home, ``homelock.HomeInUseError`` when
    another node runs on it, and ``execution.ExecutionError`` when stored state cannot be restored.
    """
    h = cfg.Home(home)
    config = cfg.read_config(h.config_file)
    config.p2p.listen = p2p_listen or config.p2p.listen
    config.rpc.listen = rpc_listen or config.rpc.listen
    lock = lock_home(h.data_dir)  # held until the process ends
    try:
        check_ports_free(config)
        level = os.environ.get(LOG_LEVEL_ENV, "info").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise cfg.ConfigError(f"{LOG_LEVEL_ENV}={level.lower()!r}: use debug, info, warning or error")
        configure_logging(config.log_format, getattr(logging, level))
        from .node import Node

        node = Node(h, peers, p2p_listen=p2p_listen, rpc_listen=rpc_listen)
        # The restored world (every agent, the journal) lives as long as the process: move it out of
        # the cyclic garbage collector's generations so collections do not rescan it (measured: ~10%
        # of catch-up time at 100,000 agents).
        gc.freeze()
        profile_to = os.environ.get(PROFILE_ENV)
        if not profile_to:
            try:
                trio.run(_run_until_signal, node)
            except BaseException as exc:
                full = disk_full_error(exc)
                if full is None:
                    raise
                log.error("disk_full", data_dir=str(h.data_dir), free_bytes=node.free_bytes(), error=str(full),
                          hint="free space on that disk, then start the node again: every committed height is "
                          "intact (each write is one transaction) and nothing was signed after the failed write")
                raise SystemExit(DISK_FULL_EXIT) from None
            return
        import cProfile

        profiler = cProfile.Profile()
        try:
            profiler.runcall(trio.run, _run_until_signal, node)
        finally:
            profiler.dump_stats(profile_to)
            log.info("profile_written", path=profile_to)
    finally:
        lock.close()  # the kernel would release it at exit anyway; a killed node leaves no stale lock
