"""Simulated clients: a population of agents that sign actions and submit them to nodes.

Each agent has an ``AgentSigner`` (Ed25519 key derived from the scenario seed). The first half of
the agents (at least one) exist from genesis (``genesis_agents``); the others are created by the
first agent, the sponsor. A submission picks an agent and asks the target node's executed world
what it knows: for an unknown agent the sponsor submits its ``CreateAgent`` (the same payload until
it commits or its nonce is used, so resubmissions are the same action id); an existing one signs a
new ``MoveAgent``, ``HarvestRadiation`` or ``TransferResource`` with its next nonce.
Every payload ever submitted is remembered (``submitted``): the validity property checks that each
committed action is one of them.
"""

from __future__ import annotations

import random
from collections import Counter

from agent_world_runtime import World
from agent_world_runtime.actions import (
    HarvestRadiation,
    MoveAgent,
    SignedAction,
    TransferResource,
    encode_signed_action,
)
from agent_world_runtime.crypto import SigningKey, sha256
from agent_world_runtime.params import GenesisAgent
from agent_world_runtime.signer import AgentSigner

from ..replica import ActionSource, AdmissionResult, Replica

#: Electricity and data of each genesis client agent.
GENESIS_BALANCE = 100_000


def client_signers(chain_id: str, count: int, seed: int) -> list[AgentSigner]:
    """The ``count`` client agents of a scenario seed, ``agent-<i>``, with derived keys."""
    return [
        AgentSigner(f"agent-{i}", SigningKey(sha256(f"sim-agent/{seed}/{i}".encode())), chain_id)
        for i in range(count)
    ]


def genesis_agents(chain_id: str, count: int, seed: int) -> list[GenesisAgent]:
    """The client agents that exist from genesis: the first half (at least one), each holding
    ``GENESIS_BALANCE`` electricity and data."""
    signers = client_signers(chain_id, count, seed)[: max(1, count // 2)]
    return [s.genesis_agent(GENESIS_BALANCE, GENESIS_BALANCE, (i % 5, 0, 0)) for i, s in enumerate(signers)]



class ClientPopulation:
    """``count`` agents on ``chain_id``; all choices come from ``rng``.

    ``submitted`` maps each submitted action id (sha256 of the payload) to its agent id;
    ``results`` counts admission outcomes by status.
    """

    def __init__(self, chain_id: str, count: int, seed: int, rng: random.Random) -> None:
        self.rng = rng
        self.signers = client_signers(chain_id, count, seed)
        self._creations: dict[str, tuple[bytes, SignedAction]] = {}
        self.submitted: dict[bytes, str] = {}
        self.results: Counter[str] = Counter()

    def _creation(self, signer: AgentSigner, world: World) -> tuple[bytes, SignedAction]:
        sponsor = self.signers[0]
        known = self._creations.get(signer.agent_id)
        record = world.get_agent(sponsor.agent_id)
        if known is None or (record is not None and known[1].body.nonce <= record.last_nonce):
            pos = (self.rng.randint(-5, 5), self.rng.randint(-5, 5), 0)
            signed = sponsor.create_agent(signer, pos, electricity=200, data=200)
            self._creations[signer.agent_id] = (encode_signed_action(signed), signed)
        return self._creations[signer.agent_id]

    def next_action(self, world: World) -> tuple[bytes, SignedAction]:
        """Pick an agent and the action it (or, to create it, the sponsor) submits next, judged
        against ``world``."""
        signer = self.rng.choice(self.signers)
        agent = world.get_agent(signer.agent_id)
        if agent is None:
            return self._creation(signer, world)
        roll = self.rng.random()
        if roll < 0.4:
            x, y, z = agent.position
            action = MoveAgent(to=(x + self.rng.randint(-2, 2), y + self.rng.randint(-2, 2), z))
        elif roll < 0.7:
            action = HarvestRadiation()
        else:
            others = [s.agent_id for s in self.signers if s is not signer and world.get_agent(s.agent_id) is not None]
            to = self.rng.choice(others) if others else signer.agent_id
            action = TransferResource(to=to, kind="electricity", amount=self.rng.randint(1, 3))
        signed = signer.sign(action)
        return encode_signed_action(signed), signed

    def submit(self, replica: Replica) -> AdmissionResult:
        """Submit one action to ``replica`` as its HTTP API would (source "api")."""
        payload, signed = self.next_action(replica.world)
        self.submitted[sha256(payload)] = signed.body.agent_id
        result = replica.admit(signed, ActionSource.API, payload)
        self.results[result.status] += 1
        return result
