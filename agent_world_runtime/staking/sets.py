"""The validator set of each epoch (docs/staking.md, "The validator set").

``epoch = height // epoch_length``. The sets of epochs 0 and 1 are the genesis set; the set of
epoch ``e + 2`` is computed by ``compute_set`` at the end of the last block of epoch ``e``, from
the state then, so every node knows the set of the next epoch a whole epoch before it begins
(CometBFT's validator updates take effect two heights later for the same reason: the header of a
height carries the hash of the next height's set, ``next_validators_hash``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .records import ValidatorSetRecord

if TYPE_CHECKING:
    from ..params import StakingParams
    from ..state import WorldState


def epoch_of(height: int, epoch_length: int) -> int:
    """Return ``height // epoch_length``. Raises ValueError for a negative height or an epoch
    length below 1."""
    if epoch_length < 1 or height < 0:
        raise ValueError(f"need height >= 0 and epoch_length >= 1, got {height} and {epoch_length}")
    return height // epoch_length


def set_record(state: "WorldState", epoch: int) -> ValidatorSetRecord | None:
    """Return the set of ``epoch``, or None when it is not known (more than one epoch ahead of
    the executed state, or pruned: sets older than the evidence window are dropped)."""
    rec = state.tables["valset"].get(str(epoch))
    return rec if isinstance(rec, ValidatorSetRecord) else None


def powers_at(state: "WorldState", height: int) -> dict[str, int] | None:
    """Return ``{validator_id: voting_power}`` of the set in force at ``height``, or None when
    unknown (see ``set_record``)."""
    rec = set_record(state, epoch_of(height, state.meta.epoch_length))
    return None if rec is None else dict(rec.validators)


def active_powers(state: "WorldState") -> dict[str, int]:
    """Return the set in force at the world's current height (the block being built, or the last
    built) as ``{validator_id: voting_power}``; empty for a world without validators."""
    return powers_at(state, state.meta.height) or {}


def compute_set(state: "WorldState", params: "StakingParams") -> list[tuple[str, int]]:
    """Return the set the current candidates make, sorted by id (see ``StakingParams``): those not
    jailed with ``bonded >= min_bond``, the ``max_validators`` largest bonds (ties broken by
    id), each with power ``min(bonded, cap)`` where ``cap = max(1, total * max_power_percent //
    100)`` over the chosen bonds' total (no cap at 100). Empty when no candidate qualifies."""
    from .records import ValidatorRecord

    candidates = [r for r in state.tables["validator"].values()
                  if isinstance(r, ValidatorRecord) and not r.jailed and r.bonded >= max(1, params.min_bond)]
    candidates.sort(key=lambda r: (-r.bonded, r.validator_id))
    chosen = candidates[: params.max_validators]
    total = sum(r.bonded for r in chosen)
    cap = total if params.max_power_percent >= 100 else max(1, total * params.max_power_percent // 100)
    return sorted((r.validator_id, min(r.bonded, cap)) for r in chosen)
