"""Signing actions for one agent with increasing nonces (for agents, CLIs and tests)."""

from __future__ import annotations

from .actions import Action, CreateAgent, Position, SignedAction, sign_action
from .crypto import SigningKey
from .params import GenesisAgent


class AgentSigner:
    """Signs actions as ``agent_id`` on ``chain_id`` with ``key``; each ``sign`` uses the next
    nonce (starting at ``next_nonce``, default 1)."""

    def __init__(self, agent_id: str, key: SigningKey, chain_id: str, next_nonce: int = 1) -> None:
        self.agent_id = agent_id
        self.key = key
        self.chain_id = chain_id
        self.next_nonce = next_nonce

    @classmethod
    def from_seed(cls, agent_id: str, seed: bytes, chain_id: str) -> "AgentSigner":
        """Return a signer whose Ed25519 key comes from the 32-byte ``seed`` (ValueError otherwise)."""
        return cls(agent_id, SigningKey(seed), chain_id)

    @property
    def public_key(self) -> bytes:
        """The agent's 32-byte Ed25519 public key."""
        return self.key.public_key

    def sign(self, action: Action, nonce: int | None = None) -> SignedAction:
        """Sign ``action`` with ``nonce`` (default: the next nonce, which then advances)."""
        if nonce is None:
            nonce = self.next_nonce
            self.next_nonce += 1
        return sign_action(self.key, self.chain_id, self.agent_id, nonce, action)

    def create_agent(self, new: "AgentSigner", position: Position = (0, 0, 0), electricity: int = 0,
                     data: int = 0) -> SignedAction:
        """Sign, as this agent (the sponsor, who pays), a ``CreateAgent`` for ``new``'s id and key at
        ``position`` with the given endowments (resource units, taken from this agent)."""
        return self.sign(CreateAgent(agent_id=new.agent_id, public_key=new.public_key, position=position,
                                     electricity=electricity, data=data))

    def genesis_agent(self, electricity: int = 0, data: int = 0, position: Position = (0, 0, 0)) -> GenesisAgent:
        """Return this agent as a ``GenesisAgent`` with the given balances (for tests and tools)."""
        return GenesisAgent(agent_id=self.agent_id, public_key=self.public_key.hex(), electricity=electricity,
                            data=data, position=position)
