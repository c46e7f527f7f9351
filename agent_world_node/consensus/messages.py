"""Inputs to and effects of the consensus core (the sans-IO boundary; docs/architecture.md, "Layers").

The driver (the replica, under the trio daemon or the simulator) turns network messages, fired
timers, mempool answers and block validity into *inputs*, feeds them to ``ConsensusCore.handle`` and
performs the returned *effects* in order. Effects that sign come as ``PersistWAL`` then
``Broadcast``: the driver must make the WAL entry durable before it sends the message, so that a
restarted node never signs a conflicting message. Two effects are questions the driver answers with
an input: ``GetValue`` (answer ``ValueToPropose``) and ``ValidateBlock`` (answer ``BlockValidity``,
the paper's valid(v)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from agent_world_node.types import Block, CommitCertificate, Proposal, Vote

from .evidence import Evidence
from .timeouts import TimeoutKind

# -- inputs ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProposalReceived:
    """A proposal from the network; checked by the core before it counts.

    ``timely`` is PBTS's ``timely`` predicate (``synchrony.timely``, [PBTS-RECEPTION-STEP.1]) as
    the driver evaluated it with its local clock when the proposal arrived: a proposal of a new
    value (``pol_round = -1``) that was not timely is prevoted nil (L22, [PBTS-ALG-UPON-PROP.1]); a
    re-proposal with a proof-of-lock round needs no timeliness (L28). The replica always passes
    it; the default (True) serves tests and drivers that model no clock. A copy of a proposal the
    core already holds does not change the timeliness recorded for the first one."""

    proposal: Proposal
    timely: bool = True


@dataclass(frozen=True, slots=True)
class VoteReceived:
    """A prevote or precommit from the network (or replayed from the WAL)."""

    vote: Vote


@dataclass(frozen=True, slots=True)
class TimeoutFired:
    """A timer scheduled by ``ScheduleTimeout`` has expired."""

    kind: TimeoutKind
    height: int
    round: int


@dataclass(frozen=True, slots=True)
class ValueToPropose:
    """The driver's answer to ``GetValue(height, round)``: the block to propose."""

    height: int
    round: int
    block: Block


@dataclass(frozen=True, slots=True)
class BlockValidity:
    """The driver's answer to ``ValidateBlock``: the paper's valid(v) for the block whose hash is
    ``block_hash``. An answer for a block the core does not hold at its current height is ignored."""

    block_hash: bytes
    valid: bool


Input = Union[ProposalReceived, VoteReceived, TimeoutFired, ValueToPropose, BlockValidity]

# -- effects --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send ``message`` (signed by this node, or re-sent unchanged) to all peers."""

    message: Union[Proposal, Vote]


@dataclass(frozen=True, slots=True)
class PersistWAL:
    """Durably record ``entry``, a message this node has just signed, before broadcasting it."""

    entry: Union[Proposal, Vote]


@dataclass(frozen=True, slots=True)
class ScheduleTimeout:
    """Fire ``TimeoutFired(kind, height, round)`` after ``duration_ms`` milliseconds."""

    kind: TimeoutKind
    height: int
    round: int
    duration_ms: int


@dataclass(frozen=True, slots=True)
class GetValue:
    """This node proposes at (height, round) and has no valid value: answer with ``ValueToPropose``."""

    height: int
    round: int


@dataclass(frozen=True, slots=True)
class ValidateBlock:
    """``block`` was seen at the current height (in a proposal, or replayed from the WAL) and its
    validity is not known: answer with ``BlockValidity(block.hash(), valid(block))``. Asked once per
    block hash and height; the rules that need valid(v) (L22, L28, L36, L49) wait for the answer."""

    block: Block


@dataclass(frozen=True, slots=True)
class Decide:
    """``block`` is decided at its height, proved by ``certificate`` (the precommits of the quorum).
    The driver executes it, waits ``TimeoutConfig.commit_ms`` and calls ``start_height(height + 1)``."""

    block: Block
    certificate: CommitCertificate


@dataclass(frozen=True, slots=True)
class EvidenceFound:
    """A validator equivocated; ``evidence`` holds both signed messages."""

    evidence: Evidence


Effect = Union[Broadcast, PersistWAL, ScheduleTimeout, GetValue, ValidateBlock, Decide, EvidenceFound]
