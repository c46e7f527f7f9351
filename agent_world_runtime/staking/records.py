"""Staking records kept in the world state (tables ``validator``, ``unbonding``, ``valset``).

All amounts are electricity units; heights and epochs are the chain's. A validator's id is the
lowercase hex of its 32-byte Ed25519 consensus public key.
"""

from __future__ import annotations

import msgspec

from ..codec import encode
from ..crypto import sha256


class ValidatorRecord(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """A validator candidate (table ``validator``, key ``validator_id``).

    ``operator`` is the agent that created it ("" for a genesis validator without one: its
    genesis bond can never be unbonded); ``bonds`` maps each bonder (an agent id, or the
    validator id for a genesis bond) to its bonded amount, ``bonded`` is their sum. ``jailed``
    validators are left out of the next sets; ``jailed_until`` is the first height at which the
    operator may unjail; ``jail_reason`` is ``double_sign`` or ``downtime``. ``signed`` counts the commits of the current epoch it signed (downtime);
    ``slashed_heights`` the heights of offences already punished (evidence is used once)."""

    validator_id: str
    operator: str
    name: str
    bonded: int
    bonds: dict[str, int]
    created_at: int = 0
    jailed: bool = False
    jailed_until: int = 0
    slashed: int = 0
    signed: int = 0
    slashed_heights: list[int] = []
    jail_reason: str = ""


class UnbondingEntry(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Stake on its way back: ``amount`` to agent ``agent_id`` from ``validator_id``, unbonded at
    height ``created_at``."""

    agent_id: str
    validator_id: str
    amount: int
    created_at: int


class UnbondingQueue(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The unbondings of one agent from one validator paid back at the end of ``release_epoch``,
    in the order they were made (table ``unbonding``, key ``unbonding_key(release_epoch, agent,
    validator)``): at most ``staking.max_unbonding_entries`` of them, as the Cosmos SDK bounds the
    entries of a delegator-validator pair, so no record grows with other agents' unbondings."""

    release_epoch: int
    entries: list[UnbondingEntry]


class ValidatorSetRecord(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The validator set in force during ``epoch`` (table ``valset``, key the epoch as decimal):
    ``validators`` is ``[validator_id, voting_power]`` sorted by id; ``computed_at`` the height
    whose end computed it (0: genesis); ``commits_counted`` how many commit certificates of the
    epoch were counted for downtime so far."""

    epoch: int
    validators: list[tuple[str, int]]
    computed_at: int = 0
    commits_counted: int = 0

    def hash(self) -> bytes:
        """``validator_set_hash(self.validators)``."""
        return validator_set_hash(self.validators)


def unbonding_key(release_epoch: int, agent_id: str, validator_id: str) -> str:
    """The ``unbonding`` table key of ``agent_id``'s unbondings from ``validator_id`` released at
    the end of ``release_epoch``: ``"<epoch>/<agent>/<validator>"``."""
    return f"{release_epoch}/{agent_id}/{validator_id}"


def validator_set_hash(validators: list[tuple[str, int]]) -> bytes:
    """Return the 32-byte hash of a validator set: ``sha256(encode([[id, power], ...]))`` over the
    entries sorted by id. Headers carry it (``validators_hash``, ``next_validators_hash``)."""
    return sha256(encode(sorted([vid, power] for vid, power in validators)))
