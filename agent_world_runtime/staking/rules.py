"""Staking transitions: the staking actions, and what each block's start and each epoch's end do
(docs/staking.md). Like ``rules``, an ``apply_*`` function checks everything and raises
``Rejected`` before it changes anything, then writes records and returns the events.

Per block, before its actions (``begin_block``; the Cosmos SDK's slashing BeginBlocker is the
model): each piece of double-sign evidence the block carries slashes and jails its validator,
once per offence height; the signers of the previous height's commit certificate (the block's
``last_commit``) are counted for downtime. At the end of the last block of epoch ``e``
(``end_block``): validators of the set that signed too few of the epoch's commits are jailed,
the unbondings due are paid back, and the set of epoch ``e + 2`` is computed and stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from ..actions import Bond, CreateValidator, Unbond, Unjail, verify_validator_key_proof
from ..crypto import PUBLIC_KEY_SIZE
from ..rules import MAX_BALANCE, ActionContext, EventSpec, Rejected
from ..state import WorldState
from .records import (
    UnbondingEntry,
    UnbondingQueue,
    ValidatorRecord,
    ValidatorSetRecord,
    unbonding_key,
    validator_set_hash,
)
from .sets import compute_set, epoch_of, set_record

VALIDATOR_CREATED = "staking.validator_created"
BONDED = "staking.bonded"
UNBONDING_STARTED = "staking.unbonding_started"
UNBONDED = "staking.unbonded"
VALIDATOR_UNJAILED = "staking.validator_unjailed"
VALIDATOR_SLASHED = "staking.validator_slashed"
VALIDATOR_JAILED = "staking.validator_jailed"
VALIDATOR_SET_SCHEDULED = "staking.validator_set_scheduled"

MAX_VALIDATOR_NAME_CHARS = 64


def validator(state: WorldState, validator_id: str) -> ValidatorRecord | None:
    """Return the validator record ``validator_id``, or None."""
    rec = state.tables["validator"].get(validator_id)
    return rec if isinstance(rec, ValidatorRecord) else None


def _require_validator(state: WorldState, validator_id: str) -> ValidatorRecord:
    rec = validator(state, validator_id)
    if rec is None:
        raise Rejected(f"no validator {validator_id[:64]!r}; list them with GET /v1/staking/validators")
    return rec


def _agent_balance_change(state: WorldState, agent_id: str, delta: int) -> None:
    agent = state.agents[agent_id]
    state.put_agent(msgspec.structs.replace(agent, electricity=agent.electricity + delta))


def _check_amount(amount: int, what: str) -> None:
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= MAX_BALANCE:
        raise Rejected(f"{what} must be a positive integer up to {MAX_BALANCE}, got {amount!r}")


def apply_create_validator(state: WorldState, ctx: ActionContext, action: CreateValidator) -> list[EventSpec]:
    """Create validator ``action.validator_key.hex()`` operated by ``ctx.agent_id`` with a first
    bond of ``action.bond`` from the operator's electricity (its fee already paid)."""
    params = state.manifest.staking
    key = action.validator_key
    if len(key) != PUBLIC_KEY_SIZE:
        raise Rejected(f"validator_key must be {PUBLIC_KEY_SIZE} bytes (an Ed25519 public key), got {len(key)}")
    vid = key.hex()
    if validator(state, vid) is not None:
        raise Rejected(f"validator {vid[:16]}... already exists; bond to it with a bond action instead")
    if vid in state.agents:
        raise Rejected(f"{vid[:16]}... is an agent's id; use another consensus key")
    if len(action.name) > MAX_VALIDATOR_NAME_CHARS:
        raise Rejected(f"name is {len(action.name)} characters; use at most {MAX_VALIDATOR_NAME_CHARS}")
    if not verify_validator_key_proof(key, state.meta.chain_id, ctx.agent_id, action.proof):
        raise Rejected("proof is not the consensus key's signature of (chain id, operator); sign it with "
                       "actions.validator_key_proof (awnode staking create-validator does)")
    _check_amount(action.bond, "bond")
    if action.bond < params.min_bond:
        raise Rejected(f"bond {action.bond} is below the minimum bond {params.min_bond}; bond more")
    have = state.agents[ctx.agent_id].electricity
    if action.bond > have:
        raise Rejected(f"agent {ctx.agent_id!r} has {have} electricity, cannot bond {action.bond}; bond less")
    _agent_balance_change(state, ctx.agent_id, -action.bond)
    state.put_record("validator", vid, ValidatorRecord(
        validator_id=vid, operator=ctx.agent_id, name=action.name, bonded=action.bond,
        bonds={ctx.agent_id: action.bond}, created_at=ctx.height))
    first_epoch = epoch_of(ctx.height, state.meta.epoch_length) + 2
    return [(VALIDATOR_CREATED, {"action_id": ctx.action_id, "agent_id": ctx.agent_id, "validator_id": vid,
                                 "name": action.name, "bond": action.bond, "earliest_epoch": first_epoch})]


def apply_bond(state: WorldState, ctx: ActionContext, action: Bond) -> list[EventSpec]:
    """Move ``action.amount`` electricity of the signer into its bond to ``action.validator_id``."""
    rec = _require_validator(state, action.validator_id)
    _check_amount(action.amount, "amount")
    have = state.agents[ctx.agent_id].electricity
    if action.amount > have:
        raise Rejected(f"agent {ctx.agent_id!r} has {have} electricity, cannot bond {action.amount}; bond less")
    limit = state.manifest.staking.max_bonds_per_validator
    if ctx.agent_id not in rec.bonds and len(rec.bonds) >= limit:
        raise Rejected(f"validator {action.validator_id[:16]}... already has {limit} bonders (the maximum); "
                       "bond to another validator")
    if rec.bonded + action.amount > MAX_BALANCE:
        raise Rejected("the validator's total bond would overflow; bond less")
    _agent_balance_change(state, ctx.agent_id, -action.amount)
    bonds = {**rec.bonds, ctx.agent_id: rec.bonds.get(ctx.agent_id, 0) + action.amount}
    state.put_record("validator", rec.validator_id,
                     msgspec.structs.replace(rec, bonds=dict(sorted(bonds.items())), bonded=rec.bonded + action.amount))
    return [(BONDED, {"action_id": ctx.action_id, "agent_id": ctx.agent_id, "validator_id": rec.validator_id,
                      "amount": action.amount, "bond": bonds[ctx.agent_id], "bonded": rec.bonded + action.amount})]


def apply_unbond(state: WorldState, ctx: ActionContext, action: Unbond) -> list[EventSpec]:
    """Take ``action.amount`` out of the signer's bond to ``action.validator_id`` into the
    unbonding queue released at the end of epoch ``e + unbonding_epochs``."""
    rec = _require_validator(state, action.validator_id)
    _check_amount(action.amount, "amount")
    held = rec.bonds.get(ctx.agent_id, 0)
    if action.amount > held:
        raise Rejected(f"agent {ctx.agent_id!r} has {held} bonded to {action.validator_id[:16]}..., cannot "
                       f"unbond {action.amount}; unbond at most {held}")
    bonds = dict(rec.bonds)
    bonds[ctx.agent_id] = held - action.amount
    if bonds[ctx.agent_id] == 0:
        del bonds[ctx.agent_id]
    state.put_record("validator", rec.validator_id,
                     msgspec.structs.replace(rec, bonds=bonds, bonded=rec.bonded - action.amount))
    params = state.manifest.staking
    release = epoch_of(ctx.height, state.meta.epoch_length) + max(0, params.unbonding_epochs)
    key = unbonding_key(release, ctx.agent_id, rec.validator_id)
    queue = _queue(state, key, release)
    if len(queue.entries) >= params.max_unbonding_entries:
        raise Rejected(f"agent {ctx.agent_id!r} already has {len(queue.entries)} unbondings from this validator "
                       f"released at the end of epoch {release} (staking.max_unbonding_entries); unbond more at once, "
                       "or in the next epoch")
    entry = UnbondingEntry(agent_id=ctx.agent_id, validator_id=rec.validator_id, amount=action.amount,
                           created_at=ctx.height)
    state.put_record("unbonding", key, msgspec.structs.replace(queue, entries=[*queue.entries, entry]))
    return [(UNBONDING_STARTED, {"action_id": ctx.action_id, "agent_id": ctx.agent_id,
                                 "validator_id": rec.validator_id, "amount": action.amount,
                                 "release_epoch": release, "bonded": rec.bonded - action.amount})]


def apply_unjail(state: WorldState, ctx: ActionContext, action: Unjail) -> list[EventSpec]:
    """Unjail ``action.validator_id`` (its operator only, at or after ``jailed_until``)."""
    rec = _require_validator(state, action.validator_id)
    if rec.operator != ctx.agent_id:
        raise Rejected(f"only the validator's operator {rec.operator!r} may unjail it")
    if not rec.jailed:
        raise Rejected(f"validator {rec.validator_id[:16]}... is not jailed")
    if ctx.height < rec.jailed_until:
        raise Rejected(f"validator {rec.validator_id[:16]}... is jailed until height {rec.jailed_until}; "
                       "unjail at or after it")
    state.put_record("validator", rec.validator_id,
                     msgspec.structs.replace(rec, jailed=False, jailed_until=0, jail_reason=""))
    return [(VALIDATOR_UNJAILED, {"action_id": ctx.action_id, "agent_id": ctx.agent_id,
                                  "validator_id": rec.validator_id})]


def _queue(state: WorldState, key: str, epoch: int) -> UnbondingQueue:
    rec = state.tables["unbonding"].get(key)
    return rec if isinstance(rec, UnbondingQueue) else UnbondingQueue(release_epoch=epoch, entries=[])


# -- evidence and downtime -----------------------------------------------------------------------


def evidence_problem(state: WorldState, validator_id: str, offence_height: int, height: int) -> str | None:
    """Why double-sign evidence against ``validator_id`` at ``offence_height`` cannot be executed
    in block ``height`` (None if it can): the validator must have been in the set at that height,
    the offence not already punished, and not older than ``evidence_max_age_heights``. The
    signatures themselves are verified by the node before the block is valid (valid(v))."""
    if not 0 < offence_height < height:
        return f"evidence height {offence_height} is not below the block's height {height}"
    if height - offence_height > state.manifest.staking.evidence_max_age_heights:
        return (f"evidence of height {offence_height} is older than evidence_max_age_heights "
                f"({state.manifest.staking.evidence_max_age_heights})")
    rec = set_record(state, epoch_of(offence_height, state.meta.epoch_length))
    if rec is None or validator_id not in dict(rec.validators):
        return f"{validator_id[:16]}... was not in the validator set at height {offence_height}"
    v = validator(state, validator_id)
    if v is None:
        return f"no validator record for {validator_id[:16]}..."
    if offence_height in v.slashed_heights:
        return f"the double sign of {validator_id[:16]}... at height {offence_height} was already punished"
    return None


def _slash(amount: int, percent: int) -> int:
    """``ceil(amount * percent / 100)``: a slash of a positive percentage takes at least 1."""
    return -(-amount * max(0, min(100, percent)) // 100)


def punish_double_sign(state: WorldState, validator_id: str, offence_height: int, height: int) -> list[EventSpec]:
    """Slash and jail ``validator_id`` for a double sign at ``offence_height`` (in block
    ``height``); nothing when ``evidence_problem`` finds a reason not to."""
    if evidence_problem(state, validator_id, offence_height, height) is not None:
        return []
    params = state.manifest.staking
    v = validator(state, validator_id)
    assert v is not None
    horizon = height - params.evidence_max_age_heights
    punished = sorted({h for h in v.slashed_heights if h >= horizon} | {offence_height})
    if v.jailed and v.jail_reason == "double_sign":
        # one slash per jailing (the Cosmos SDK tombstones after the first): more evidence of the
        # same spree is recorded, so it is never used again, and burns nothing more
        state.put_record("validator", validator_id, msgspec.structs.replace(v, slashed_heights=punished))
        return [(VALIDATOR_SLASHED, {"validator_id": validator_id, "offence_height": offence_height,
                                     "reason": "double_sign", "burned": 0, "jailed_until": v.jailed_until,
                                     "already_jailed": True})]
    pct = params.slash_double_sign_percent
    bonds = {who: amount - _slash(amount, pct) for who, amount in v.bonds.items()}
    burned = v.bonded - sum(bonds.values())
    for key in sorted(k for k in state.tables["unbonding"] if k.endswith("/" + validator_id)):
        queue = state.tables["unbonding"][key]
        assert isinstance(queue, UnbondingQueue)
        changed = [msgspec.structs.replace(e, amount=e.amount - _slash(e.amount, pct))
                   if e.validator_id == validator_id and e.created_at >= offence_height else e
                   for e in queue.entries]
        if changed != queue.entries:
            burned += sum(a.amount - b.amount for a, b in zip(queue.entries, changed, strict=True))
            state.put_record("unbonding", key, msgspec.structs.replace(queue, entries=changed))
    until = height + params.double_sign_jail_heights
    state.put_record("validator", validator_id, msgspec.structs.replace(
        v, bonds={k: b for k, b in bonds.items() if b > 0}, bonded=sum(bonds.values()), slashed=v.slashed + burned,
        jailed=True, jailed_until=max(v.jailed_until, until), slashed_heights=punished, jail_reason="double_sign"))
    return [(VALIDATOR_SLASHED, {"validator_id": validator_id, "offence_height": offence_height,
                                 "reason": "double_sign", "burned": burned, "jailed_until": until})]


def begin_block(state: WorldState, height: int, last_commit_signers: Sequence[str] | None,
                evidence: Sequence[tuple[str, int]]) -> list[EventSpec]:
    """The staking work at the start of block ``height``: punish each ``(validator_id,
    offence_height)`` of ``evidence`` (verified by the node), then count the signers of height
    ``height - 1``'s commit certificate (``last_commit_signers``; None: the block carries none)
    towards downtime, when that height is in the current epoch."""
    out: list[EventSpec] = []
    for validator_id, offence_height in evidence:
        out.extend(punish_double_sign(state, validator_id, offence_height, height))
    length = state.meta.epoch_length
    if last_commit_signers is None or height < 2 or epoch_of(height - 1, length) != epoch_of(height, length):
        return out
    epoch = epoch_of(height, length)
    current = set_record(state, epoch)
    if current is None:
        return out
    members = dict(current.validators)
    for vid in sorted(set(last_commit_signers)):
        v = validator(state, vid)
        if vid in members and v is not None:
            state.put_record("validator", vid, msgspec.structs.replace(v, signed=v.signed + 1))
    state.put_record("valset", str(epoch), msgspec.structs.replace(current, commits_counted=current.commits_counted + 1))
    return out


def end_block(state: WorldState, height: int) -> list[EventSpec]:
    """At the end of the last block of an epoch ``e``: jail the set's validators that signed
    fewer than ``downtime_min_signed_percent`` of the commits counted, pay back the unbondings of
    epoch ``e``, compute and store the set of epoch ``e + 2`` (unchanged when no candidate
    qualifies: a chain never schedules an empty set), and drop the sets older than the evidence
    window. Nothing at other heights."""
    length = state.meta.epoch_length
    if (height + 1) % length != 0:
        return []
    epoch = epoch_of(height, length)
    params = state.manifest.staking
    out: list[EventSpec] = []
    current = set_record(state, epoch)
    counted = current.commits_counted if current is not None else 0
    for vid in sorted(state.tables["validator"]):
        v = validator(state, vid)
        assert v is not None
        in_set = current is not None and vid in dict(current.validators)
        if in_set and counted > 0 and not v.jailed and v.signed * 100 < params.downtime_min_signed_percent * counted:
            until = height + params.downtime_jail_heights
            v = msgspec.structs.replace(v, jailed=True, jailed_until=until, jail_reason="downtime")
            out.append((VALIDATOR_JAILED, {"validator_id": vid, "reason": "downtime", "signed": v.signed,
                                           "commits": counted, "jailed_until": until}))
        if v.signed or v is not state.tables["validator"][vid]:
            state.put_record("validator", vid, msgspec.structs.replace(v, signed=0))
    due = sorted(k for k in state.tables["unbonding"] if k.startswith(f"{epoch}/"))
    for key in due:
        queue = state.tables["unbonding"][key]
        assert isinstance(queue, UnbondingQueue)
        for e in queue.entries:
            if e.agent_id in state.agents and e.amount > 0:
                agent = state.agents[e.agent_id]
                state.put_agent(msgspec.structs.replace(agent, electricity=min(MAX_BALANCE, agent.electricity + e.amount)))
            out.append((UNBONDED, {"agent_id": e.agent_id, "validator_id": e.validator_id, "amount": e.amount}))
        state.delete_record("unbonding", key)
    out.extend(schedule_next_set(state, epoch, height))
    horizon = epoch_of(max(0, height - params.evidence_max_age_heights), length) - 1
    for key in [k for k in state.tables["valset"] if int(k) < horizon]:
        state.delete_record("valset", key)
    return out


def schedule_next_set(state: WorldState, epoch: int, height: int) -> list[EventSpec]:
    """Compute and store the set of epoch ``epoch + 2`` (``sets.compute_set``) and return its
    ``staking.validator_set_scheduled`` event."""
    target = epoch + 2
    previous = set_record(state, epoch + 1)
    chosen = compute_set(state, state.manifest.staking)
    kept = not chosen
    if kept:
        chosen = list(previous.validators) if previous is not None else []
    state.put_record("valset", str(target), ValidatorSetRecord(epoch=target, validators=chosen, computed_at=height))
    before = dict(previous.validators) if previous is not None else {}
    after = dict(chosen)
    data: dict[str, Any] = {
        "epoch": target, "validators": [[vid, power] for vid, power in chosen],
        "hash": validator_set_hash(chosen), "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": sorted(v for v in set(after) & set(before) if after[v] != before[v]),
    }
    if kept:
        data["kept_previous"] = True
    return [(VALIDATOR_SET_SCHEDULED, data)]
