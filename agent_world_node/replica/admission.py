"""Admission: whether a signed action may enter this node's mempool, and the gossip of admitted ones.

An action is admitted when its encoding is within the runtime's size limit, it is not already
pending, and the executed world's admission rules accept it (chain id, agent, signature, nonce, and
a fee the agent can pay on top of the fees of its actions already pending here;
``agent_world_runtime.admission``). Refusals carry an ``AdmissionCode`` created where each check
fails. Decoded actions are kept by the node's ``ActionDecoder``, so validity and execution do not
decode them again; verified signatures are remembered, and so are recently committed actions,
whose late gossip copies are dropped without a decode (``mempool.RecentIds``). Actions
from clients are queued for gossip to peers in batches (``take_gossip_batches``), and gossiped
again while they stay pending (``take_regossip_batches``): a peer that missed the first copy (it
was restarting, partitioned, or dropped it under load) must not leave them out of every block.

Clients are refused as busy when the backlog exceeds what the chain commits in a short time
(``intake.IntakeControl``); actions from peers and the node's own (build attestations) are not.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from agent_world_runtime import World
from agent_world_runtime.actions import MAX_ACTION_PAYLOAD_BYTES, SignedAction, decode_signed_action
from agent_world_runtime.codec import DecodeError, encode
from agent_world_runtime.crypto import sha256

from ..mempool import Mempool, MempoolFull, RecentIds
from ..metrics import NodeMetrics
from ..schema import AdmissionCode, AdmissionStatus
from ..types import GossipActionBatch, Topic
from .intake import IntakeControl
from .outputs import Publish

#: Most action payloads one gossiped batch may carry.
MAX_BATCH_ACTIONS = 10_000


class ActionSource(enum.StrEnum):
    """Where an action came from: a client of this node (gossiped on; refused when the backlog is
    over the intake budget), a peer's gossip, this node itself (a validator's build attestation:
    gossiped on, never refused for the backlog), or this process (tools that build chains offline;
    not gossiped)."""

    API = "api"
    GOSSIP = "gossip"
    NODE = "node"
    LOCAL = "local"


@dataclass(frozen=True, slots=True)
class AdmissionResult:
    """The outcome of admitting one action: ``status``; for rejected and busy, ``code`` and
    ``reason`` (what was wrong and what to do); for busy, ``retry_after_ms``."""

    status: AdmissionStatus
    action_id: bytes = b""
    code: AdmissionCode | None = None
    reason: str = ""
    retry_after_ms: int = 0


class ActionDecoder:
    """The one place a node decodes action payloads, and keeps the decoded forms it may need
    again: admission, valid(v) and execution all ask it by action id, so each action is decoded
    at most once per node while it is among the ``capacity`` most recently used (a bound large
    enough for a full mempool and the blocks in flight). ``count`` counts the decodes."""

    def __init__(self, capacity: int = 50_000) -> None:
        self.count = 0
        self.capacity = capacity
        self._recent: OrderedDict[bytes, SignedAction] = OrderedDict()

    def decode(self, action_id: bytes, payload: bytes) -> SignedAction:
        """The decoded action ``action_id`` whose canonical encoding is ``payload`` (its sha256 is
        ``action_id``; callers check that). Raises ``DecodeError`` when the payload does not decode,
        or is not the canonical encoding of what it decodes to: a re-encoded copy of an action
        (other key order, wider integers) would carry another action id under the same signature."""
        signed = self._recent.get(action_id)
        if signed is None:
            self.count += 1
            signed = decode_signed_action(payload)
            if encode(signed) != payload:
                raise DecodeError("action payload is not in canonical form (msgspec msgpack, docs/wire-format.md)")
        self.remember(action_id, signed)
        return signed

    def remember(self, action_id: bytes, signed: SignedAction) -> None:
        """Keep ``signed``, decoded elsewhere (e.g. from the API's JSON), as the form of ``action_id``."""
        self._recent[action_id] = signed
        self._recent.move_to_end(action_id)
        if len(self._recent) > self.capacity:
            self._recent.popitem(last=False)


class Admission:
    """The mempool's gatekeeper (see the module docstring).

    ``world()`` returns the executed world the rules read; ``retry_after_ms`` is the hint given with
    a full mempool; ``intake`` bounds the backlog clients may add to, on the clock ``now_ms()``
    (the driver's tick clock, ms)."""

    def __init__(
        self,
        mempool: Mempool,
        world: Callable[[], World],
        decoder: ActionDecoder,
        metrics: NodeMetrics,
        retry_after_ms: int,
        intake: IntakeControl,
        now_ms: Callable[[], int],
    ) -> None:
        self.mempool = mempool
        self.intake = intake
        self._now_ms = now_ms
        #: actions this node took from its clients (or signed itself) and still pending: action id
        #: -> (payload, tick ms of its last gossip), oldest gossip first
        self._own_pending: OrderedDict[bytes, tuple[bytes, int]] = OrderedDict()
        self.verified_signatures = RecentIds()
        self.recently_committed = RecentIds()
        self._world = world
        self._decoder = decoder
        self._metrics = metrics
        self._retry_after_ms = retry_after_ms
        self._pending_gossip: list[bytes] = []
        self._admitted_counters = {s: metrics.actions_admitted.labels(s.value) for s in ActionSource}

    def admit(
        self, signed: SignedAction, source: ActionSource, payload: bytes | None = None, action_id: bytes | None = None
    ) -> AdmissionResult:
        """Admit ``signed`` (whose canonical encoding is ``payload`` and sha256 ``action_id``, each
        computed when not given).

        Returns accepted (in the mempool; queued for gossip when ``source`` is API or NODE),
        duplicate (already pending), rejected (``code``: too_large or a world admission code) or
        busy (``over_capacity`` for a client action above the intake budget, checked before the
        signature; ``mempool_full``; both with ``retry_after_ms``). Never raises for bad input."""
        if payload is None:
            payload = encode(signed)
        if action_id is None:
            action_id = sha256(payload)
        if len(payload) > MAX_ACTION_PAYLOAD_BYTES:
            return self._refuse(
                action_id,
                AdmissionCode.TOO_LARGE,
                f"action of {len(payload)} bytes exceeds {MAX_ACTION_PAYLOAD_BYTES}; send a smaller action",
            )
        if action_id in self.mempool:
            return AdmissionResult(AdmissionStatus.DUPLICATE, action_id)
        if source is ActionSource.API:
            busy = self.client_refusal(action_id)
            if busy is not None:
                return busy
        self._decoder.remember(action_id, signed)
        world = self._world()
        agent_id = signed.body.agent_id
        refusal = world.check_action(signed, payload_bytes=len(payload), owed=self.mempool.owed(agent_id))
        if refusal is not None:
            return self._refuse(action_id, AdmissionCode.from_refusal(refusal.code), refusal.message)
        self.verified_signatures.add(action_id)
        try:
            self.mempool.add(payload, action_id, signed, world.action_fee(signed, len(payload)))
        except MempoolFull as exc:
            self._metrics.actions_refused.labels(AdmissionCode.MEMPOOL_FULL.value).inc()
            return AdmissionResult(
                AdmissionStatus.BUSY,
                action_id,
                code=AdmissionCode.MEMPOOL_FULL,
                reason=f"{exc}; retry later",
                retry_after_ms=self._retry_after_ms,
            )
        self._admitted_counters[source].inc()
        if source in (ActionSource.API, ActionSource.NODE):
            self._pending_gossip.append(payload)
            self._own_pending[action_id] = (payload, self._now_ms())
        return AdmissionResult(AdmissionStatus.ACCEPTED, action_id)

    def client_refusal(self, action_id: bytes = b"") -> AdmissionResult | None:
        """The busy answer (``over_capacity``, counted) for a client action when the backlog is at
        the intake budget, or None when clients may add to it (``intake.IntakeControl``)."""
        now = self._now_ms()
        retry_ms = self.intake.refusal(len(self.mempool), now)
        if retry_ms is None:
            return None
        self._metrics.actions_refused.labels(AdmissionCode.OVER_CAPACITY.value).inc()
        return AdmissionResult(
            AdmissionStatus.BUSY,
            action_id,
            code=AdmissionCode.OVER_CAPACITY,
            reason=(f"{len(self.mempool)} actions are pending and the chain commits about "
                    f"{self.intake.rate(now):.0f} per second; retry after {retry_ms} ms"),
            retry_after_ms=retry_ms,
        )

    def admit_gossip(self, payloads: list[bytes]) -> int:
        """Admit the actions of a peer's ``GossipActionBatch`` (at most ``MAX_BATCH_ACTIONS``);
        payloads already pending or recently committed cost one hash, not a decode. Returns how
        many did not decode."""
        malformed = 0
        for payload in payloads[:MAX_BATCH_ACTIONS]:
            action_id = sha256(payload)
            if action_id in self.mempool or action_id in self.recently_committed:
                continue
            try:
                signed = self._decoder.decode(action_id, payload)
            except DecodeError:
                self.refused(AdmissionCode.MALFORMED)
                malformed += 1
                continue
            self.admit(signed, ActionSource.GOSSIP, payload, action_id)
        return malformed

    def committed(self, action_ids: list[bytes]) -> None:
        """``action_ids`` were committed: drop them from the mempool and remember them."""
        self.mempool.remove(action_ids)
        for action_id in action_ids:
            self.recently_committed.add(action_id)
            self._own_pending.pop(action_id, None)

    def refused(self, code: AdmissionCode) -> None:
        """Count a refusal decided outside ``admit`` (e.g. the API could not decode the body)."""
        self._metrics.actions_refused.labels(code.value).inc()

    def _refuse(self, action_id: bytes, code: AdmissionCode, reason: str) -> AdmissionResult:
        self.refused(code)
        return AdmissionResult(AdmissionStatus.REJECTED, action_id, code=code, reason=reason)

    def take_gossip_batches(self, max_bytes: int) -> list[Publish]:
        """Batches (each at most ``max_bytes`` encoded) of the client actions admitted here and not
        yet gossiped, oldest first; empties the queue."""
        out: list[Publish] = []
        pending = self._pending_gossip
        while pending:
            size, count = 0, 0
            while count < len(pending) and size + len(pending[count]) + 16 < max_bytes:
                size += len(pending[count]) + 16
                count += 1
            if count == 0:  # one payload alone exceeds the budget (cannot happen under the action limit)
                del pending[0]
                continue
            out.append(Publish(Topic.ACTIONS, encode(GossipActionBatch(pending[:count]))))
            del pending[:count]
        return out

    def take_regossip_batches(self, after_ms: int, max_bytes: int) -> list[Publish]:
        """Gossip again, in one batch of at most ``max_bytes`` encoded, the oldest of this node's
        own pending actions (see ``ActionSource``) last gossiped ``after_ms`` or more ago (tick
        clock). Actions no longer in the mempool (committed, or dropped by recheck) are forgotten.
        Peers that hold them already drop the copies after one hash."""
        now = self._now_ms()
        own = self._own_pending
        chosen: list[bytes] = []
        size = 0
        while own:
            action_id, (payload, at) = next(iter(own.items()))
            if action_id not in self.mempool:
                del own[action_id]
                continue
            if now - at < after_ms or size + len(payload) + 16 >= max_bytes:
                break
            size += len(payload) + 16
            chosen.append(payload)
            del own[action_id]
            own[action_id] = (payload, now)  # to the end: gossiped now
        if not chosen:
            return []
        self._metrics.actions_regossiped.inc(len(chosen))
        return [Publish(Topic.ACTIONS, encode(GossipActionBatch(chosen)))]
