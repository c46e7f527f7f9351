"""Proposer-based timestamps (PBTS): when a proposed block's time is acceptable.

CometBFT, spec/consensus/proposer-based-timestamp/ (pbts-algorithm.md, pbts-sysmodel.md): a block's
time is its original proposer's clock, and a correct validator prevotes a *new* value (a proposal
with ``pol_round = -1``, paper L22) only if the proposal was ``timely`` when it arrived
([PBTS-ALG-UPON-PROP.1]). Then no single proposer can move the chain's time: a committed block was
prevoted by more than 2/3 of the stake, so in its first polka round at least one correct validator
with a synchronized clock found it timely, which bounds the block time by that clock (see
docs/design-choices.md, "Block time").

The predicate is a pure function of the block time, the local reception time and the genesis
``SynchronyParams``: the driver (the replica) reads its clock when a proposal arrives and hands the
answer to the core as ``ProposalReceived.timely``; the core reads no clock.
"""

from __future__ import annotations

from agent_world_node.config import SynchronyParams


def timely(block_time_ms: int, received_ms: int, params: SynchronyParams) -> bool:
    """[PBTS-RECEPTION-STEP.1]: a proposal received at local time ``received_ms`` whose block time
    is ``block_time_ms`` is timely iff
    ``block_time - PRECISION <= received <= block_time + MSGDELAY + PRECISION``.

    The lower bound: sending precedes reception, and the receiver's clock may be at most
    ``PRECISION`` behind the proposer's. The upper bound: the proposal takes at most ``MSGDELAY``
    and the receiver's clock may be at most ``PRECISION`` ahead."""
    return (
        block_time_ms - params.precision_ms
        <= received_ms
        <= block_time_ms + params.message_delay_ms + params.precision_ms
    )


def untimely_reason(block_time_ms: int, received_ms: int, params: SynchronyParams) -> str | None:
    """Why the proposal is not timely ("from_the_future" or "too_old"), None when it is."""
    if received_ms < block_time_ms - params.precision_ms:
        return "from_the_future"
    if received_ms > block_time_ms + params.message_delay_ms + params.precision_ms:
        return "too_old"
    return None
