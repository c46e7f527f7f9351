"""``InboundQueues``: the received gossip waiting for the daemon, one bounded queue per class.

Shape: ``put(InboundMessage)`` never blocks (the pubsub readers call it); the daemon takes messages
with ``await receive()``, ``receive_nowait()`` or ``async for msg in queues`` (the same calls as a
``trio.MemoryReceiveChannel``, which this replaces). Three classes, by logical topic:

- **consensus** (``proposal``, ``vote``, ``commit``): at most ``consensus_size`` messages, in
  one FIFO per origin peer served round-robin, so a peer that floods valid-looking consensus
  messages (stale votes, say) delays only its own: the other origins' messages are taken in turn
  with its. When full, the OLDEST message of the origin with the most queued is dropped
  (``queue_full_consensus``): a newer consensus message matters more, the flooder pays, and
  anything lost is recovered by re-gossip or sync.
- **actions** (batches of client actions): a FIFO of at most ``actions_size`` messages, dropping
  the oldest when full (``queue_full_actions``).
- **status** (height heartbeats): at most ONE queued message per origin peer. A new status from
  a peer replaces the one still queued (``status_coalesced``): only the latest height of a peer
  matters, so a status flood costs O(peers) memory and one handling per peer. At most
  ``status_peers`` origins are queued; beyond that the oldest queued one is dropped
  (``queue_full_status``).

Order of taking: consensus always first; when no consensus message waits, actions and status take
turns (one each, alternating, whichever is non-empty), so neither can starve the other and a
status or action flood never delays a vote or proposal.

Drops are counted in the ``dropped`` dict given to the constructor (``NetworkStats.dropped``, so
they show in ``P2PNetwork.stats()["dropped"]``) and logged as ``inbound_queue_full`` at most once
per ``QUEUE_FULL_LOG_INTERVAL_S`` per class. ``close()`` ends ``receive()`` with
``trio.EndOfChannel`` once the queues are empty; ``put`` after ``close`` raises
``trio.ClosedResourceError``.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque

import structlog
import trio

from .config import InboundMessage

log = structlog.get_logger(__name__)

#: Which queue each logical topic goes to.
CONSENSUS_TOPICS = frozenset({"proposal", "vote", "commit"})
ACTIONS_TOPIC = "actions"
STATUS_TOPIC = "status"
#: Minimum seconds between two "queue full" warnings of one class (each drop is still counted).
QUEUE_FULL_LOG_INTERVAL_S = 1.0


def message_class(topic: str) -> str:
    """The queue class of logical ``topic``: ``"consensus"``, ``"actions"`` or ``"status"``.
    Raises ValueError for any other topic."""
    if topic in CONSENSUS_TOPICS:
        return "consensus"
    if topic == ACTIONS_TOPIC:
        return "actions"
    if topic == STATUS_TOPIC:
        return "status"
    raise ValueError(f"no inbound queue for topic {topic!r}")


def _bump(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


class InboundQueues:
    """Bounded per-class queues of received gossip (see the module docstring).

    ``consensus_size``, ``actions_size``: most messages queued in each FIFO; ``status_peers``: most
    origins with a queued status; all at least 1 (ValueError otherwise). ``dropped``: the counter
    dict drops are added to (by reason); a fresh one when omitted.
    """

    def __init__(self, consensus_size: int, actions_size: int, status_peers: int,
                 dropped: dict[str, int] | None = None) -> None:
        if min(consensus_size, actions_size, status_peers) < 1:
            raise ValueError("every inbound queue bound must be at least 1")
        self.consensus_size = consensus_size
        self.actions_size = actions_size
        self.status_peers = status_peers
        self.dropped: dict[str, int] = {} if dropped is None else dropped
        self._consensus: OrderedDict[str, deque[InboundMessage]] = OrderedDict()  # by origin, next first
        self._consensus_len = 0
        self._actions: deque[InboundMessage] = deque()
        self._status: OrderedDict[str, InboundMessage] = OrderedDict()
        self._status_next = False  # which low-priority class goes next: status (True) or actions
        self._closed = False
        self._wakeup = trio.Event()
        self._last_full_log: dict[str, float] = {}

    # ------------------------------------------------------------------ producer side

    def put(self, message: InboundMessage) -> None:
        """Queue ``message`` by its class, dropping (and counting) what the bound requires; never
        blocks. Raises ``trio.ClosedResourceError`` after ``close()``, ValueError for an unknown
        topic."""
        if self._closed:
            raise trio.ClosedResourceError("the inbound queues are closed")
        kind = message_class(message.topic)
        if kind == "consensus":
            self._push_consensus(message)
        elif kind == "actions":
            self._push_fifo(self._actions, self.actions_size, message, kind)
        else:
            self._push_status(message)
        self._wakeup.set()

    def _push_fifo(self, queue: deque[InboundMessage], bound: int, message: InboundMessage, kind: str) -> None:
        if len(queue) >= bound:
            queue.popleft()
            self._note_full(kind, message)
        queue.append(message)

    def _push_consensus(self, message: InboundMessage) -> None:
        if self._consensus_len >= self.consensus_size:
            fullest = max(self._consensus, key=lambda origin: len(self._consensus[origin]))
            queue = self._consensus[fullest]
            queue.popleft()
            self._consensus_len -= 1
            if not queue:
                del self._consensus[fullest]
            self._note_full("consensus", message)
        self._consensus.setdefault(message.peer_id, deque()).append(message)
        self._consensus_len += 1

    def _pop_consensus(self) -> InboundMessage:
        origin, queue = next(iter(self._consensus.items()))
        message = queue.popleft()
        self._consensus_len -= 1
        del self._consensus[origin]
        if queue:
            self._consensus[origin] = queue  # to the back: the other origins go first
        return message

    def _push_status(self, message: InboundMessage) -> None:
        peer = message.peer_id
        if peer in self._status:
            del self._status[peer]  # re-inserted at the end: the newest status of that peer
            _bump(self.dropped, "status_coalesced")
        elif len(self._status) >= self.status_peers:
            self._status.popitem(last=False)
            self._note_full("status", message)
        self._status[peer] = message

    def _note_full(self, kind: str, message: InboundMessage) -> None:
        reason = f"queue_full_{kind}"
        _bump(self.dropped, reason)
        now = time.monotonic()
        if now - self._last_full_log.get(kind, -QUEUE_FULL_LOG_INTERVAL_S) >= QUEUE_FULL_LOG_INTERVAL_S:
            self._last_full_log[kind] = now
            log.warning("inbound_queue_full", queue=kind, topic=message.topic, peer=message.peer_id,
                        dropped_total=self.dropped[reason])

    def close(self) -> None:
        """No more ``put``; ``receive`` ends with ``trio.EndOfChannel`` once the queues are empty."""
        self._closed = True
        self._wakeup.set()

    # ------------------------------------------------------------------ consumer side

    def receive_nowait(self) -> InboundMessage:
        """The next message by priority (see the module docstring). Raises ``trio.WouldBlock``
        when nothing is queued, ``trio.EndOfChannel`` when nothing is queued and closed."""
        if self._consensus:
            return self._pop_consensus()
        if self._actions and (not self._status or not self._status_next):
            self._status_next = True
            return self._actions.popleft()
        if self._status:
            self._status_next = False
            return self._status.popitem(last=False)[1]
        if self._closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> InboundMessage:
        """Wait for and return the next message by priority; ``trio.EndOfChannel`` once closed
        and empty. Cancellation never loses a message (as with a trio memory channel)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                message = self.receive_nowait()
            except trio.WouldBlock:
                if self._wakeup.is_set():
                    self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            await trio.lowlevel.cancel_shielded_checkpoint()
            return message

    def __aiter__(self) -> "InboundQueues":
        return self

    async def __anext__(self) -> InboundMessage:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    # ------------------------------------------------------------------ views

    def queued(self) -> dict[str, int]:
        """Messages queued now, by class: ``{"consensus": n, "actions": n, "status": n}``."""
        return {"consensus": self._consensus_len, "actions": len(self._actions), "status": len(self._status)}

    def __len__(self) -> int:
        return self._consensus_len + len(self._actions) + len(self._status)
