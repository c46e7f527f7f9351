"""valid(v): whether this node may vote for a proposed block (Tendermint paper, Algorithm 1, the
predicate of L22, L28, L36 and L49).

``BlockValidity.problem(block)`` returns why not (None when valid):

1. the block's shape (``types.block_shape_problem``: chain id, height, action count and root,
   payload hashes and action ids, no action twice);
2. it extends our chain: parent hash is our last committed block, timestamp later than its (PBTS
   time monotonicity; whether the time is *timely* is not valid(v) but judged by the replica on
   reception, ``consensus.synchrony``),
   epoch = height // epoch_length, at most ``max_block_actions`` actions;
3. every action decodes, its submitter is the signing agent and the block rules of the executed
   world accept it in block order (``agent_world_runtime.admission.BlockPlan``: the agent exists,
   the action is for this chain, nonces increase, and the agent can pay the fees of all its
   actions in the block; a build attestation comes from a genesis validator, once per build),
   and its signature verifies against the signer's key (``World.signer_key``); signatures this
   node verified before (at admission) are not verified again;
4. the chain of validator sets and the block's body: ``validators_hash`` and
   ``next_validators_hash`` are the hashes of the sets the executed world holds for this height and
   the next (``replica.sets``); ``last_commit`` is absent at height 1 and otherwise a commit
   certificate of the previous block that verifies against the previous height's set (the
   certificate we hold ourselves is accepted without verifying it again); every piece of evidence
   passes ``replica.evidence``;
5. the proposer's execution hashes of the previous height equal ours (``ExecutionCheck``).

Actions are decoded through the node's ``ActionDecoder``, which keeps them for execution (and
already holds those admitted here).
"""

from __future__ import annotations

from collections.abc import Callable

from agent_world_runtime import World
from agent_world_runtime.actions import SignedAction, verify_action_signature
from agent_world_runtime.codec import DecodeError

from ..consensus.certificate import InvalidCertificate, verify_commit_certificate
from ..mempool import RecentIds
from ..types import Block, CommitCertificate, block_shape_problem
from .admission import ActionDecoder
from .evidence import BlockEvidence
from .execution_check import ExecutionCheck
from .sets import ValidatorSets


class BlockValidity:
    """valid(v) for the next height (see the module docstring). The chain tip (height, last block
    hash and time) is read from ``tip()`` at each call."""

    def __init__(
        self,
        *,
        chain_id: str,
        epoch_length: int,
        max_block_actions: int,
        tip: Callable[[], tuple[int, bytes, int]],
        world: Callable[[], World],
        verified: RecentIds,
        decoder: ActionDecoder,
        execution: ExecutionCheck,
        sets: ValidatorSets,
        evidence: BlockEvidence,
        last_certificate: Callable[[], CommitCertificate | None],
    ) -> None:
        self._chain_id = chain_id
        self._epoch_length = epoch_length
        self._max_block_actions = max_block_actions
        self._tip = tip
        self._world = world
        self._verified = verified
        self._decoder = decoder
        self._execution = execution
        self._sets = sets
        self._evidence = evidence
        self._last_certificate = last_certificate

    def problem(self, block: Block) -> str | None:
        """Why ``block`` is not valid at the next height, or None. Never raises for bad input."""
        height, last_hash, last_time_ms = self._tip()
        h = block.header
        problem = block_shape_problem(block, self._chain_id, height + 1)
        if problem is not None:
            return problem
        if h.prev_block_hash != last_hash:
            return "previous block hash does not match our last committed block"
        if h.timestamp_ms <= last_time_ms:
            # PBTS "Time Monotonicity": decided block times strictly increase (the proposer
            # stamps at least previous + 1, Replica._block_time); timeliness is not part of
            # valid(v), it is judged on reception (consensus.synchrony).
            return "timestamp not after the previous block's"
        if h.epoch != h.height // self._epoch_length:
            return f"epoch {h.epoch} is not height // epoch_length"
        if len(block.actions) > self._max_block_actions:
            return f"{len(block.actions)} actions exceed max_block_actions"
        problem = self._actions_problem(block) or self._chain_problem(block, last_hash)
        if problem is not None:
            return problem
        return self._execution.check_proposal(h)

    def _chain_problem(self, block: Block, last_hash: bytes) -> str | None:
        """Rule 4: the validator-set hashes, the last commit and the evidence."""
        h = block.header
        if h.validators_hash != self._sets.hash_at(h.height):
            return "validators_hash is not the hash of this height's validator set"
        if h.next_validators_hash != self._sets.hash_at(h.height + 1):
            return "next_validators_hash is not the hash of the next height's validator set"
        cert = block.last_commit
        if h.height == 1:
            if cert is not None:
                return "the block of height 1 carries a last commit; there is no previous block"
        elif cert is None:
            return "the block carries no last commit (the certificate of the previous height)"
        elif cert != self._last_certificate():
            if cert.height != h.height - 1 or cert.block_hash != last_hash:
                return "last commit is not a certificate of the previous block"
            vset = self._sets.at(h.height - 1)
            if vset is None:
                return "the validator set of the previous height is not known"
            try:
                verify_commit_certificate(cert, last_hash, self._chain_id, vset, height=h.height - 1)
            except InvalidCertificate as exc:
                return f"last commit does not verify: {exc}"
        return self._evidence.problem(block)

    def _actions_problem(self, block: Block) -> str | None:
        world = self._world()
        plan = world.block_plan()
        for act in block.actions:
            signed = self.decoded_action(act.action_id, act.payload)
            if signed is None:
                return f"action {act.action_id.hex()[:16]} is malformed"
            if signed.body.agent_id != act.submitter:
                return f"action {act.action_id.hex()[:16]}: submitter is not the signing agent"
            refusal = plan.admit(signed, len(act.payload))
            if refusal is not None:
                return f"action {act.action_id.hex()[:16]} cannot be in this block ({refusal.code}): {refusal.message}"
            if act.action_id not in self._verified:
                key = world.signer_key(signed)
                if key is None or not verify_action_signature(signed, key):
                    return f"action {act.action_id.hex()[:16]} has a bad signature"
                self._verified.add(act.action_id)
        return None

    def decoded_action(self, action_id: bytes, payload: bytes) -> SignedAction | None:
        """The decoded action ``action_id``, or None when its payload does not decode."""
        try:
            return self._decoder.decode(action_id, payload)
        except DecodeError:
            return None

