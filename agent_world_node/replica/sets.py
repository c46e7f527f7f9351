"""The validator set in force at each height, read from the executed world (docs/staking.md).

The world stores the set of every epoch it knows (``World.validator_set``): the genesis set for
epochs 0 and 1, and the set of epoch ``e + 2`` from the end of epoch ``e`` on. A node executed
through height ``h`` therefore knows the sets of ``epoch(h)`` and ``epoch(h) + 1``, which covers
every height it verifies certificates for (``h + 1``, and ``h + 1``'s next), proposes or votes at.
Sets of later epochs are unknown (None): messages and certificates of such far heights cannot be
judged yet.
"""

from __future__ import annotations

from collections.abc import Callable

from agent_world_runtime import World

from ..consensus.validators import Validator, ValidatorSet

#: Sets kept converted (by epoch); a node needs two or three at a time.
CACHE_EPOCHS = 8


class ValidatorSets:
    """``at(height)``: the ``ValidatorSet`` in force at ``height`` (None when unknown); ``hash_at``
    its ``validator_set_hash``. Reads ``world()`` at each call; conversions are cached by epoch and
    set hash, so a set recomputed for an epoch is never served stale."""

    def __init__(self, world: Callable[[], World]) -> None:
        self._world = world
        self._cache: dict[int, tuple[bytes, ValidatorSet]] = {}

    def epoch_of(self, height: int) -> int:
        """The epoch of ``height``."""
        return height // self._world().epoch_length

    def at(self, height: int) -> ValidatorSet | None:
        """The set in force at ``height``, or None when the world does not know it (an empty
        set counts as unknown: no height can be certified by nobody)."""
        world = self._world()
        epoch = height // world.epoch_length
        rec = world.validator_set(epoch)
        if rec is None or not rec.validators:
            return None
        digest = rec.hash()
        cached = self._cache.get(epoch)
        if cached is not None and cached[0] == digest:
            return cached[1]
        members = []
        for vid, power in rec.validators:
            record = world.validator_record(vid)
            members.append(Validator.from_public_key(bytes.fromhex(vid), power, record.name if record else ""))
        vset = ValidatorSet(members)
        self._cache[epoch] = (digest, vset)
        if len(self._cache) > CACHE_EPOCHS:
            del self._cache[min(self._cache)]
        return vset

    def hash_at(self, height: int) -> bytes | None:
        """``validator_set_hash`` of the set in force at ``height``, or None when unknown."""
        world = self._world()
        rec = world.validator_set(height // world.epoch_length)
        return None if rec is None or not rec.validators else rec.hash()
