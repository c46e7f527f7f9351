"""The mempool: admitted client actions waiting for a block.

Admission is checked by the caller (signature, agent, nonce and fee against the executed world and
the fees the agent already owes here, ``owed``). The pool keeps at most ``max_actions`` entries; a
full pool refuses new actions (the HTTP API answers 503 with a retry hint) rather than accepting and
dropping them. A proposer reaps the oldest actions up to a count and byte budget, ordered by
(submitter, nonce, action id) and filtered by the block rules. After each commit ``recheck`` drops
what can no longer be committed (CometBFT's recheck): used nonces and fees the agent cannot pay.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from agent_world_runtime.actions import SignedAction
from agent_world_runtime.codec import encode

from .types import NodeConsensusAction


class MempoolFull(RuntimeError):
    """The mempool holds ``max_actions`` actions; retry after the next block."""


@dataclass(frozen=True, slots=True)
class MempoolEntry:
    """One admitted action: its consensus form, the (submitter, nonce) ordering key, its fee
    (electricity) and ``size``, the bytes it adds to an encoded block (its encoding plus the at
    most 5 bytes of its array slot)."""

    action: NodeConsensusAction
    nonce: int
    fee: int
    size: int

    @property
    def sort_key(self) -> tuple[str, int, bytes]:
        """The deterministic block order: (submitter, nonce, action id)."""
        return (self.action.submitter, self.nonce, self.action.action_id)


class Mempool:
    """Pending actions keyed by action id."""

    def __init__(self, max_actions: int) -> None:
        self.max_actions = max_actions
        self._entries: dict[bytes, MempoolEntry] = {}
        self._owed: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, action_id: bytes) -> bool:
        return action_id in self._entries

    def owed(self, agent_id: str) -> int:
        """The fees (electricity) of ``agent_id``'s pending actions."""
        return self._owed.get(agent_id, 0)

    def add(self, payload: bytes, payload_hash: bytes, signed: SignedAction, fee: int) -> bool:
        """Add an admitted action whose fee is ``fee``. Returns False when it is already pending
        (same action id); raises MempoolFull when the pool is at capacity."""
        if payload_hash in self._entries:
            return False
        if len(self._entries) >= self.max_actions:
            raise MempoolFull(f"mempool holds {len(self._entries)} actions (limit {self.max_actions})")
        submitter = signed.body.agent_id
        action = NodeConsensusAction(action_id=payload_hash, submitter=submitter, payload=payload, payload_hash=payload_hash)
        self._entries[payload_hash] = MempoolEntry(action, signed.body.nonce, fee, len(encode(action)) + 5)
        self._owed[submitter] = self._owed.get(submitter, 0) + fee
        return True

    def reap(self, max_actions: int, max_bytes: int,
             fits: Callable[[NodeConsensusAction], bool]) -> list[NodeConsensusAction]:
        """Return up to ``max_actions`` pending actions whose encodings total at most ``max_bytes``:
        the oldest first (admission order, so a backlog drains fairly and no agent waits behind
        others), then put in (submitter, nonce, action id) order so each agent's actions execute
        in nonce order, keeping those ``fits`` accepts in that order (the block rules: the caller
        passes a ``BlockPlan``'s admit). The actions stay pending until ``remove``."""
        picked: list[MempoolEntry] = []
        size = 0
        for entry in self._entries.values():  # dicts keep insertion (admission) order
            if len(picked) >= max_actions or size + entry.size > max_bytes:
                break
            picked.append(entry)
            size += entry.size
        picked.sort(key=lambda e: e.sort_key)
        return [e.action for e in picked if fits(e.action)]

    def remove(self, action_ids: list[bytes]) -> None:
        """Drop actions (committed, or no longer admissible)."""
        for aid in action_ids:
            entry = self._entries.pop(aid, None)
            if entry is not None:
                submitter = entry.action.submitter
                left = self._owed.get(submitter, 0) - entry.fee  # a fee-free action (attestation) owes nothing
                if left:
                    self._owed[submitter] = left
                else:
                    self._owed.pop(submitter, None)

    def recheck(self, balance_of: Callable[[str], tuple[int, int] | None],
                still_admissible: Callable[[NodeConsensusAction], bool] = lambda a: True) -> int:
        """Drop what can no longer be committed, given ``balance_of(agent_id)`` = (last executed
        nonce, electricity) or None for a submitter that is no agent: actions whose nonce is used,
        and, in admission order, each action whose fee would take its agent's pending fees above its
        electricity; an action of a submitter that is no agent (a validator's build attestation)
        is dropped unless ``still_admissible(action)``. Returns how many were dropped."""
        dropped: list[bytes] = []
        owed: dict[str, int] = {}
        for aid, entry in self._entries.items():
            submitter = entry.action.submitter
            account = balance_of(submitter)
            if account is None:
                if not still_admissible(entry.action):
                    dropped.append(aid)
                continue
            last_nonce, electricity = account
            total = owed.get(submitter, 0) + entry.fee
            if entry.nonce <= last_nonce or total > electricity:
                dropped.append(aid)
            else:
                owed[submitter] = total
        self.remove(dropped)
        return len(dropped)


class RecentIds:
    """A bounded set of action ids, least recently added dropped first (``capacity`` ids).

    The replica keeps two: the ids whose signature it verified (safe to trust later, because an
    agent's key never changes once the agent exists), and the ids it recently committed (a late gossip copy of a committed action is
    dropped without decoding it, as CometBFT's mempool cache does).
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self._items: OrderedDict[bytes, None] = OrderedDict()
        self.capacity = capacity

    def add(self, action_id: bytes) -> None:
        """Remember ``action_id``."""
        self._items[action_id] = None
        self._items.move_to_end(action_id)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __contains__(self, action_id: bytes) -> bool:
        return action_id in self._items
