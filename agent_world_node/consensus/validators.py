"""Validators, their stake, and the stake thresholds of Tendermint.

A validator's id is the lowercase hex of its 32-byte Ed25519 public key. Voting power is stake (a
positive integer); every threshold is computed over stake, never over validator counts:

- ``quorum = floor(2 * total / 3) + 1``: the least stake that is *more than* 2/3 of the total
  (the paper's ``2f + 1`` with ``n = 3f + 1``).
- ``f_plus_one = floor(total / 3) + 1``: the least stake that is *more than* 1/3 of the total
  (the paper's ``f + 1``): any set with this much stake contains at least one correct validator
  when Byzantine stake is below 1/3.

Validator sets change only at epoch boundaries (``epoch = height // epoch_length``). The world
runtime computes the set of each epoch (``agent_world_runtime.staking``); the replica turns the
one in force at a height into a ``ValidatorSet`` (``replica.sets.ValidatorSets``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator

if TYPE_CHECKING:
    from agent_world_node.config import Genesis

from agent_world_runtime.crypto import PUBLIC_KEY_SIZE


class ValidatorSetError(ValueError):
    """A validator set is malformed (empty, non-positive stake, duplicate or malformed id)."""


@dataclass(frozen=True, slots=True)
class Validator:
    """One validator: ``id`` is ``public_key.hex()``, ``stake`` a positive integer, ``name`` a label."""

    id: str
    public_key: bytes
    stake: int
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.public_key) != PUBLIC_KEY_SIZE:
            raise ValidatorSetError(
                f"validator {self.name or self.id!r}: public key is {len(self.public_key)} bytes, "
                f"expected {PUBLIC_KEY_SIZE}"
            )
        if self.id != self.public_key.hex():
            raise ValidatorSetError(
                f"validator {self.name or self.id!r}: id must be the lowercase hex of its public key"
            )
        if not isinstance(self.stake, int) or isinstance(self.stake, bool) or self.stake <= 0:
            raise ValidatorSetError(
                f"validator {self.name or self.id!r}: stake {self.stake!r} must be a positive integer"
            )

    @classmethod
    def from_public_key(cls, public_key: bytes, stake: int, name: str = "") -> "Validator":
        """Build a validator whose id is ``public_key.hex()``."""
        return cls(public_key.hex(), bytes(public_key), stake, name)


class ValidatorSet:
    """An immutable set of validators, ordered by id (the order every node uses).

    Raises ValidatorSetError when empty or when two validators share an id. Equal sets (same ids,
    keys, stakes and names) compare and hash equal, so a set can key caches (see ``proposer``).
    """

    __slots__ = ("validators", "total_stake", "quorum", "f_plus_one", "_by_id", "_hash")

    def __init__(self, validators: Iterable[Validator]) -> None:
        ordered = tuple(sorted(validators, key=lambda v: v.id))
        if not ordered:
            raise ValidatorSetError("a validator set needs at least one validator")
        by_id: dict[str, Validator] = {}
        for v in ordered:
            if v.id in by_id:
                raise ValidatorSetError(f"validator {v.id} appears twice in the set")
            by_id[v.id] = v
        self.validators: tuple[Validator, ...] = ordered
        self.total_stake: int = sum(v.stake for v in ordered)
        self.quorum: int = (2 * self.total_stake) // 3 + 1
        self.f_plus_one: int = self.total_stake // 3 + 1
        self._by_id = by_id
        self._hash = hash(ordered)

    @classmethod
    def from_genesis(cls, genesis: "Genesis") -> "ValidatorSet":
        """Return the genesis validator set (``genesis.validators``, stake as given).

        Raises ValidatorSetError naming the validator if a public key is not 32 bytes of hex.
        """
        validators = []
        for gv in genesis.validators:
            try:
                key = bytes.fromhex(gv.public_key)
            except ValueError:
                raise ValidatorSetError(
                    f"genesis validator {gv.name!r}: public_key is not hex; fix genesis.json"
                ) from None
            validators.append(Validator(key.hex(), key, gv.stake, gv.name))
        return cls(validators)

    def get(self, validator_id: str) -> Validator | None:
        """Return the validator with this id, or None."""
        return self._by_id.get(validator_id)

    def stake_of(self, validator_id: str) -> int:
        """Return the stake of ``validator_id`` (0 when it is not in the set)."""
        v = self._by_id.get(validator_id)
        return v.stake if v is not None else 0

    def has_quorum(self, stake: int) -> bool:
        """True iff ``stake`` is more than 2/3 of the total stake."""
        return stake >= self.quorum

    def has_f_plus_one(self, stake: int) -> bool:
        """True iff ``stake`` is more than 1/3 of the total stake."""
        return stake >= self.f_plus_one

    def ids(self) -> list[str]:
        """Return the validator ids in set order (sorted)."""
        return [v.id for v in self.validators]

    def __contains__(self, validator_id: object) -> bool:
        return validator_id in self._by_id

    def __iter__(self) -> Iterator[Validator]:
        return iter(self.validators)

    def __len__(self) -> int:
        return len(self.validators)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ValidatorSet) and self.validators == other.validators

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"ValidatorSet(n={len(self.validators)}, total_stake={self.total_stake})"
