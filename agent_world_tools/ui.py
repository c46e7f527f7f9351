"""What every ``awnode`` command shares: the consoles, the error a user can fix (``CliError``),
turning such errors into one red line (``friendly_errors``), quiet library logs, and the node
client the commands use (``make_client``, which tests replace)."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Iterator

import structlog
import typer
from rich.console import Console
from rich.markup import escape

from agent_world_client.client import ClientError, SyncNodeClient
from agent_world_node.config import ConfigError, read_key
from agent_world_node.daemon import HOME_STATE_ERRORS
from agent_world_runtime.crypto import SigningKey

from .testnet import TestnetError

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


class CliError(RuntimeError):
    """A usage error the user can fix; the message says what was wrong and what to do."""


class _CurrentStderr:
    """A file object that writes to whatever ``sys.stderr`` is at the time of the write, so a
    configured logger does not keep a stream that was replaced and closed since (e.g. by a
    test runner capturing a command's output)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def quiet_logs() -> None:
    """Library logs of client commands go to stderr, warnings and errors only (the daemon configures
    its own logging in ``start``; the testnet launcher logs to a file)."""
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),
    )


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """Turn errors a user can fix into one red line on stderr and exit status 1."""
    try:
        yield
    except (ConfigError, ClientError, TestnetError, CliError, *HOME_STATE_ERRORS) as exc:
        err_console.print(f"[bold red]error:[/bold red] [red]{escape(str(exc))}[/red]", highlight=False)
        raise typer.Exit(1) from None


def make_client(rpc: str) -> SyncNodeClient:
    """Return the client the commands use for ``--rpc`` (tests replace this to inject a transport)."""
    return SyncNodeClient(rpc)


def read_agent_key(path: Path) -> tuple[SigningKey, str | None]:
    """Read a key file (``awnode keygen`` or node key format); return the key and its agent_id if any.
    Raises ConfigError or ClientError naming the file (a missing file: how to make an agent key)."""
    if not Path(path).exists():
        raise CliError(f"{path}: key file not found; create an agent key with `awnode keygen --agent-id ID --out {path}`")
    key = read_key(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    agent_id = data.get("agent_id") if isinstance(data, dict) else None
    return key, agent_id if isinstance(agent_id, str) else None
