"""Domain rules: what each agent action does to the world.

Each ``apply_*`` function checks everything first and raises ``Rejected`` (with a reason that says
what was wrong and what to do) before changing anything; only then does it write records through
``WorldState.put_*`` and return the events to journal as ``(kind, data)`` pairs. Identity,
signature and nonce checks happen earlier, in ``admission``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from . import events as ev
from .actions import (
    AGENT_ID_RE,
    AGENT_ID_RULE,
    RESOURCE_KINDS,
    CreateAgent,
    HarvestRadiation,
    MoveAgent,
    Position,
    TransferResource,
)
from .crypto import PUBLIC_KEY_SIZE
from .state import AgentRecord, WorldState

MAX_BALANCE = (1 << 63) - 1

EventSpec = tuple[str, dict[str, Any]]


class Rejected(Exception):
    """An action breaks a world rule; ``reason`` is the text of the ``domain.action_rejected`` event."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ActionContext:
    """Who acts and where: the action id (sha256 of its payload), the agent, its nonce, and the
    height of the block being built."""

    action_id: bytes
    agent_id: str
    nonce: int
    height: int


def _position(pos: Position) -> Position:
    """Return ``pos`` as a tuple of three coordinates (a struct built in-process may hold a list)."""
    x, y, z = pos
    return (x, y, z)


def _fmt(pos: Position) -> str:
    return f"({pos[0]}, {pos[1]}, {pos[2]})"


def check_position(state: WorldState, pos: Position) -> None:
    """Raise Rejected unless every coordinate of ``pos`` is within ``[-grid_size, grid_size]``."""
    g = state.manifest.params.grid_size
    if any(not -g <= c <= g for c in pos):
        raise Rejected(f"position {_fmt(pos)} is outside the grid; each coordinate must be within [-{g}, {g}]")


def apply_create_agent(state: WorldState, ctx: ActionContext, action: CreateAgent) -> list[EventSpec]:
    """Create agent ``action.agent_id`` for the sponsor ``ctx.agent_id``, who gives it
    ``action.electricity`` and ``action.data`` from its own balances (its fee is already paid).
    The new agent's ``last_nonce`` is 0, so its first action uses nonce 1."""
    new_id = action.agent_id
    if not AGENT_ID_RE.fullmatch(new_id):
        raise Rejected(f"invalid agent id {new_id[:64]!r}: {AGENT_ID_RULE}")
    if new_id in state.agents:
        raise Rejected(f"agent {new_id!r} already exists; choose another agent id")
    if new_id in state.tables["validator"]:
        raise Rejected(f"{new_id[:16]}... is a validator's id (validators attest builds under it); choose another agent id")
    if len(action.public_key) != PUBLIC_KEY_SIZE:
        raise Rejected(f"public_key must be {PUBLIC_KEY_SIZE} bytes (Ed25519), got {len(action.public_key)}")
    check_position(state, action.position)
    sponsor = state.agents[ctx.agent_id]
    for kind in RESOURCE_KINDS:
        amount, have = getattr(action, kind), getattr(sponsor, kind)
        if not 0 <= amount <= have:
            raise Rejected(
                f"agent {ctx.agent_id!r} has {have} {kind}, cannot give {amount} to the new agent; "
                "give an amount between 0 and its balance"
            )
    state.put_agent(msgspec.structs.replace(
        sponsor, electricity=sponsor.electricity - action.electricity, data=sponsor.data - action.data,
    ))
    record = AgentRecord(
        agent_id=new_id,
        public_key=action.public_key,
        position=_position(action.position),
        electricity=action.electricity,
        data=action.data,
        last_nonce=0,
        registered_at=ctx.height,
    )
    state.put_agent(record)
    return [(ev.AGENT_CREATED, {
        "action_id": ctx.action_id,
        "agent_id": ctx.agent_id,
        "created_agent_id": new_id,
        "public_key": action.public_key,
        "position": list(record.position),
        "electricity": record.electricity,
        "data": record.data,
    })]


def apply_move(state: WorldState, ctx: ActionContext, action: MoveAgent) -> list[EventSpec]:
    """Move the agent to ``action.to``; costs ``move_cost_per_step`` per unit of Manhattan distance."""
    agent = state.agents[ctx.agent_id]
    to = _position(action.to)
    check_position(state, to)
    if to == agent.position:
        raise Rejected(f"agent {ctx.agent_id!r} is already at {_fmt(to)}; move to a different position")
    distance = sum(abs(a - b) for a, b in zip(to, agent.position, strict=True))
    cost = distance * state.manifest.params.move_cost_per_step
    if cost > agent.electricity:
        raise Rejected(
            f"moving {distance} steps costs {cost} electricity but agent {ctx.agent_id!r} has {agent.electricity}; "
            "harvest radiation first or move a shorter distance"
        )
    state.put_agent(msgspec.structs.replace(agent, position=to, electricity=agent.electricity - cost))
    return [(ev.AGENT_MOVED, {
        "action_id": ctx.action_id,
        "agent_id": ctx.agent_id,
        "from": list(agent.position),
        "to": list(to),
        "distance": distance,
        "cost": cost,
        "electricity": agent.electricity - cost,
    })]


def apply_harvest(state: WorldState, ctx: ActionContext, action: HarvestRadiation) -> list[EventSpec]:
    """Add ``harvest_amount`` electricity to the agent, at most once per ``harvest_interval``
    heights: a free gain, so it is bounded per agent."""
    agent = state.agents[ctx.agent_id]
    params = state.manifest.params
    amount = params.harvest_amount
    last = agent.last_harvest_height
    if last and ctx.height < last + params.harvest_interval:
        raise Rejected(
            f"agent {ctx.agent_id!r} harvested at height {last}; it may harvest again from height "
            f"{last + params.harvest_interval} (one harvest per {params.harvest_interval} heights)"
        )
    if agent.electricity + amount > MAX_BALANCE:
        raise Rejected(f"agent {ctx.agent_id!r} holds the maximum electricity ({MAX_BALANCE}); spend some first")
    state.put_agent(msgspec.structs.replace(
        agent, electricity=agent.electricity + amount, last_harvest_height=ctx.height,
    ))
    return [(ev.RADIATION_HARVESTED, {
        "action_id": ctx.action_id,
        "agent_id": ctx.agent_id,
        "position": list(agent.position),
        "amount": amount,
        "electricity": agent.electricity + amount,
    })]


def apply_transfer(state: WorldState, ctx: ActionContext, action: TransferResource) -> list[EventSpec]:
    """Move ``amount`` of resource ``kind`` from the agent to ``action.to``."""
    if action.kind not in RESOURCE_KINDS:
        raise Rejected(f"unknown resource kind {action.kind[:40]!r}; use one of {list(RESOURCE_KINDS)}")
    if action.amount <= 0:
        raise Rejected(f"transfer amount must be positive, got {action.amount}")
    if action.to == ctx.agent_id:
        raise Rejected(f"agent {ctx.agent_id!r} cannot transfer to itself")
    recipient = state.agents.get(action.to)
    if recipient is None:
        raise Rejected(f"unknown recipient agent {action.to[:64]!r}")
    sender = state.agents[ctx.agent_id]
    have = getattr(sender, action.kind)
    if have < action.amount:
        raise Rejected(f"agent {ctx.agent_id!r} has {have} {action.kind}, not enough to transfer {action.amount}")
    if getattr(recipient, action.kind) + action.amount > MAX_BALANCE:
        raise Rejected(f"recipient {action.to!r} would exceed the maximum {action.kind} balance ({MAX_BALANCE})")
    state.put_agent(msgspec.structs.replace(sender, **{action.kind: have - action.amount}))
    state.put_agent(msgspec.structs.replace(recipient, **{action.kind: getattr(recipient, action.kind) + action.amount}))
    return [(ev.RESOURCE_TRANSFERRED, {
        "action_id": ctx.action_id,
        "agent_id": ctx.agent_id,
        "to": action.to,
        "kind": action.kind,
        "amount": action.amount,
    })]
