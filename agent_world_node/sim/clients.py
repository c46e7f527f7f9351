"""Simulated clients: a population of agents that sign actions and submit them to nodes.

Each agent has an ``AgentSigner`` (Ed25519 key derived from the scenario seed). A submission picks
an agent and asks the target node's executed world what it knows: an unknown agent submits its
``RegisterAgent`` (always the same payload, so resubmissions are the same action id); a registered
one signs a new ``MoveAgent``, ``HarvestRadiation`` or ``TransferResource`` with its next nonce.
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
from agent_world_runtime.signer import AgentSigner

from ..replica import ActionSource, AdmissionResult, Replica


class ClientPopulation:
    """``count`` agents on ``chain_id``; all choices come from ``rng``.

    ``submitted`` maps each submitted action id (sha256 of the payload) to its agent id;
    ``results`` counts admission outcomes by status.
    """

    def __init__(self, chain_id: str, count: int, seed: int, rng: random.Random) -> None:
        self.rng = rng
        self.signers = [
            AgentSigner(f"agent-{i}", SigningKey(sha256(f"sim-agent/{seed}/{i}".encode())), chain_id)
            for i in range(count)
        ]
        self._registrations: dict[str, tuple[bytes, SignedAction]] = {}
        self.submitted: dict[bytes, str] = {}
        self.results: Counter[str] = Counter()

    def _registration(self, signer: AgentSigner) -> tuple[bytes, SignedAction]:
        if signer.agent_id not in self._registrations:
            pos = (self.rng.randint(-5, 5), self.rng.randint(-5, 5), 0)
            signed = signer.register(pos)
            self._registrations[signer.agent_id] = (encode_signed_action(signed), signed)
        return self._registrations[signer.agent_id]

    def next_action(self, world: World) -> tuple[bytes, SignedAction]:
        """Pick an agent and the action it submits next, judged against ``world``."""
        signer = self.rng.choice(self.signers)
        agent = world.get_agent(signer.agent_id)
        if agent is None:
            return self._registration(signer)
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
