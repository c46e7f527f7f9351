"""The push stream of executed heights: ``GET /v1/stream`` as Server-Sent Events.

The format is the WHATWG HTML specification's ``text/event-stream`` (section 9.2, "Server-sent
events"): each message is ``event:``, ``id:`` and ``data:`` lines and a blank line; lines that
start with ``:`` are comments (the keep-alives). A browser's ``EventSource`` reconnects by itself
and sends the last ``id`` it saw as ``Last-Event-ID``; the stream then resumes after that height.

Messages, in this order on every connection:

- ``hello``: ``{chain_id, node_id, moniker, height, execution_height}``;
- ``block`` with ``id: <height>``, one per executed height, in order and without gaps:
  ``{height, block_hash, time_ms, round, proposer, actions, signers, execution_state_root,
  events, events_truncated}`` (``signers``: the validator ids whose precommits the commit
  certificate holds; ``events``: the world's events of that height, at most
  ``MAX_EVENTS_PER_BLOCK``);
- ``reset`` ``{height, reason}`` when the client asked to resume from more than
  ``MAX_BACKLOG_HEIGHTS`` heights back, or from a height this node no longer has: the client
  reloads what it shows over the REST API and follows the stream from ``height``.

Nothing here is consensus: the stream reads the store and the executed world between blocks.
Its costs are bounded: at most ``MAX_SUBSCRIBERS`` streams at once (503 beyond), each message
built once per height and shared by every subscriber (``BlockFeed`` keeps the last
``KEEP_MESSAGES``), and a client that reads too slowly only falls behind until it is reset.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any, Protocol

import trio

from agent_world_runtime.codec import to_builtins
from agent_world_runtime.events import Event

from .store import ExecutionRecord
from .types import ReplicatedCommitPayload

MAX_SUBSCRIBERS = 64  # concurrent streams per node
MAX_BACKLOG_HEIGHTS = 256  # a resume from further back is answered by ``reset``
MAX_EVENTS_PER_BLOCK = 2_000  # events carried by one ``block`` message; beyond, events_truncated
KEEP_MESSAGES = 512  # built messages kept for the subscribers that follow a few heights behind
KEEPALIVE_S = 15.0  # a comment line at least this often, so proxies keep the connection open


class FeedSource(Protocol):
    """What the feed reads of a node: the executed height, the stored block, execution record and
    the world's events of a height, and the identity for ``hello``."""

    @property
    def execution_height(self) -> int: ...
    def stored_block(self, height: int) -> ReplicatedCommitPayload | None: ...
    def stored_execution(self, height: int) -> ExecutionRecord | None: ...
    def events_at(self, height: int) -> list[Event]: ...
    def hello(self) -> dict[str, Any]: ...


def sse_message(event: str, data: Any, *, id_: int | None = None) -> bytes:
    """One ``text/event-stream`` message: ``event:``, optional ``id:``, one ``data:`` line of
    compact JSON, and the blank line that ends it (JSON never holds a raw newline)."""
    head = f"event: {event}\n" + (f"id: {id_}\n" if id_ is not None else "")
    return (head + "data: " + json.dumps(data, separators=(",", ":")) + "\n\n").encode()


def block_summary(stored: ReplicatedCommitPayload, execution: ExecutionRecord | None,
                  events: list[Event]) -> dict[str, Any]:
    """The ``block`` message's data for one executed height (see the module docstring)."""
    header = stored.block.header
    kept = events[:MAX_EVENTS_PER_BLOCK]
    return {
        "height": header.height,
        "block_hash": stored.block.hash().hex(),
        "time_ms": header.timestamp_ms,
        "round": header.round,
        "proposer": header.proposer,
        "actions": len(stored.block.actions),
        "signers": sorted(s.validator for s in stored.certificate.signatures),
        "execution_state_root": execution.execution_state_root.hex() if execution is not None else None,
        "events": [to_builtins(e) for e in kept],
        "events_truncated": len(events) > len(kept),
    }


class BlockFeed:
    """The executed heights of one node as stream messages, and the wake-up of their readers.

    The node calls ``advanced()`` after each step of its replica; readers wait in
    ``wait_beyond(height)``. Messages are built on first request and kept for the last
    ``KEEP_MESSAGES`` heights, so N subscribers cost one build per height."""

    def __init__(self, source: FeedSource) -> None:
        self._source = source
        self._changed = trio.Event()
        self._messages: OrderedDict[int, bytes] = OrderedDict()
        self.subscribers = 0

    def advanced(self) -> None:
        """Wake every reader (the executed height may have moved)."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_beyond(self, height: int, timeout_s: float) -> None:
        """Return once the executed height is above ``height``, or after ``timeout_s`` seconds."""
        with trio.move_on_after(timeout_s):
            while self._source.execution_height <= height:
                await self._changed.wait()

    def message(self, height: int) -> bytes | None:
        """The ``block`` message of executed ``height``, or None when this node does not hold its
        block (pruned, or before a state-sync snapshot)."""
        cached = self._messages.get(height)
        if cached is not None:
            return cached
        stored = self._source.stored_block(height)
        if stored is None:
            return None
        data = block_summary(stored, self._source.stored_execution(height), self._source.events_at(height))
        msg = sse_message("block", data, id_=height)
        self._messages[height] = msg
        while len(self._messages) > KEEP_MESSAGES:
            self._messages.popitem(last=False)
        return msg

    async def stream(self, after: int | None) -> AsyncIterator[bytes]:
        """The messages of one connection: ``hello``, then every executed height above ``after``
        (default: the executed height now, so only new blocks), keep-alives, and ``reset`` when
        ``after`` is too far back. Runs until the client goes away."""
        hello = self._source.hello()
        yield sse_message("hello", hello)
        tip = self._source.execution_height
        last = tip if after is None else min(after, tip)
        if tip - last > MAX_BACKLOG_HEIGHTS:
            yield sse_message("reset", {"height": tip, "reason": f"resuming from height {last} is more than "
                                        f"{MAX_BACKLOG_HEIGHTS} heights back; reload and follow from {tip}"})
            last = tip
        while True:
            await self.wait_beyond(last, KEEPALIVE_S)
            tip = self._source.execution_height
            if tip <= last:
                yield b": keepalive\n\n"
                continue
            if tip - last > MAX_BACKLOG_HEIGHTS:  # this reader fell far behind (slow client, sync burst)
                yield sse_message("reset", {"height": tip, "reason": f"fell more than {MAX_BACKLOG_HEIGHTS} "
                                            f"heights behind; reload and follow from {tip}"})
                last = tip
                continue
            for height in range(last + 1, tip + 1):
                msg = self.message(height)
                if msg is None:
                    yield sse_message("reset", {"height": tip, "reason": f"this node does not hold block {height}; "
                                                f"reload and follow from {tip}"})
                    break
                yield msg
            last = tip
