"""Worlds for runtime tests: a genesis ``bank`` agent that creates (and pays for) the test agents.

Since no agent may create itself, tests fund their agents the way a chain does: a genesis agent with
large balances signs ``CreateAgent`` for each of them.
"""

from __future__ import annotations

from agent_world_runtime import World, compute_action_id
from agent_world_runtime.actions import Position, SignedAction
from agent_world_runtime.events import Event
from agent_world_runtime.params import WorldParams
from agent_world_runtime.signer import AgentSigner

BANK_ID = "bank"
BANK_SEED = b"\xba" * 32
BANK_BALANCE = 10**15


def bank_signer(world: World) -> AgentSigner:
    """The genesis bank of ``world``, signing with its next nonce as the world has it."""
    record = world.get_agent(BANK_ID)
    assert record is not None, "this world has no bank; build it with genesis_world"
    return AgentSigner(BANK_ID, AgentSigner.from_seed(BANK_ID, BANK_SEED, world.chain_id).key, world.chain_id,
                       next_nonce=record.last_nonce + 1)


def genesis_world(chain_id: str, params: WorldParams | None = None, **kwargs) -> World:
    """A world at height 0 whose only agent is the bank (``BANK_BALANCE`` electricity and data)."""
    bank = AgentSigner.from_seed(BANK_ID, BANK_SEED, chain_id)
    return World.from_genesis(chain_id, params or WorldParams(),
                              agents=[bank.genesis_agent(BANK_BALANCE, BANK_BALANCE)], **kwargs)


def create_signed(world: World, new: AgentSigner, position: Position = (0, 0, 0), electricity: int = 100,
                  data: int = 1000) -> SignedAction:
    """The bank's signed ``CreateAgent`` for ``new`` with these endowments (not applied)."""
    return bank_signer(world).create_agent(new, position, electricity, data)


def create(world: World, new: AgentSigner, position: Position = (0, 0, 0), electricity: int = 100,
           data: int = 1000) -> list[Event]:
    """Create ``new`` in the open block of ``world`` (the bank signs and pays); return the events."""
    signed = create_signed(world, new, position, electricity, data)
    return world.apply_action(signed, compute_action_id(signed))
