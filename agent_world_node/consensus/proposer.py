"""Stake-weighted, deterministic proposer selection from (height, round).

Formula. For a height ``h`` the validators (sorted by id) are put in a stake-weighted random order
by successive draws without replacement; the proposer of round ``r`` is entry ``r mod n``::

    remaining = validators sorted by id
    for i in 0, 1, ..., n-1:
        seed_i = sha256(PROPOSER_DOMAIN || uint64_be(h) || uint32_be(i))
        x      = int_be(seed_i) mod sum(stake of remaining)
        pick the first validator in `remaining` whose cumulative stake exceeds x
        order[i] = it; remove it from `remaining`
    proposer(h, r) = order[r mod n]

Properties:
- Every node computes the same proposer from (validator set, height, round): only integers and
  SHA-256 are involved (no floats, no clock, no local state).
- The round-0 proposer of a height is drawn with probability exactly stake / total stake (up to the
  negligible bias of reducing a 256-bit number), so over many heights each validator proposes in
  proportion to its stake.
- Within one height, rounds 0..n-1 have n distinct proposers, so a crashed or Byzantine proposer
  holds up at most one round in every n (the rotation guarantee CometBFT's priority queue gives).
"""

from __future__ import annotations

from functools import lru_cache

from agent_world_runtime.crypto import sha256

from .validators import ValidatorSet

PROPOSER_DOMAIN = b"agent-world/proposer/v1\x00"
_MAX_HEIGHT = 2**64 - 1


@lru_cache(maxsize=256)
def proposer_order(validator_set: ValidatorSet, height: int) -> tuple[str, ...]:
    """Return the stake-weighted order of validator ids for ``height`` (see the module formula).

    Raises ValueError when ``height`` is outside ``[0, 2**64 - 1]``. Cost: O(n^2) for n validators,
    cached per (set, height).
    """
    if not 0 <= height <= _MAX_HEIGHT:
        raise ValueError(f"height {height} is outside [0, 2**64 - 1]")
    remaining = list(validator_set.validators)
    remaining_stake = validator_set.total_stake
    prefix = PROPOSER_DOMAIN + height.to_bytes(8, "big")
    order: list[str] = []
    for i in range(len(remaining)):
        x = int.from_bytes(sha256(prefix + i.to_bytes(4, "big")), "big") % remaining_stake
        cumulative = 0
        for j, v in enumerate(remaining):
            cumulative += v.stake
            if x < cumulative:
                order.append(v.id)
                remaining_stake -= v.stake
                del remaining[j]
                break
    return tuple(order)


def proposer_for(validator_set: ValidatorSet, height: int, round: int) -> str:
    """Return the validator id of the proposer of (``height``, ``round``).

    Raises ValueError for a negative round or a height outside ``[0, 2**64 - 1]``.
    """
    if round < 0:
        raise ValueError(f"round must be non-negative, got {round}")
    order = proposer_order(validator_set, height)
    return order[round % len(order)]
