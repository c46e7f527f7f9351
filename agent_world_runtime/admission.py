"""Admission of a signed action: chain id, identity, signature and nonce (DESIGN.md, "Actions,
blocks and roots"; actions.py docstring).

Rules, checked in this order:

1. ``body.chain_id`` equals the world's chain id.
2. ``RegisterAgent``: the agent id matches ``AGENT_ID_RE`` and is not registered yet; the
   signature is checked against the public key the action carries; the nonce must be >= 0.
   Any other action: the agent must be registered; the signature is checked against its key.
3. The nonce is strictly greater than the agent's ``last_nonce`` (gaps allowed); anything else is
   a replay.

``admission_reason`` returns None when all hold, else the reason; it reads state and never changes it.
"""

from __future__ import annotations

from .actions import AGENT_ID_RE, RegisterAgent, SignedAction, verify_action_signature
from .state import WorldState


def admission_reason(state: WorldState, signed: SignedAction, *, check_signature: bool = True) -> str | None:
    """Return None if ``signed`` passes the rules above against ``state``, else a reason string."""
    body = signed.body
    agent_id = body.agent_id
    if body.chain_id != state.meta.chain_id:
        return f"wrong chain id {body.chain_id[:64]!r} (this world is {state.meta.chain_id!r}); sign for this chain"
    if isinstance(body.action, RegisterAgent):
        if not AGENT_ID_RE.match(agent_id):
            return f"invalid agent id {agent_id[:64]!r}: use 1-64 characters of a-z, 0-9, '_', '.', '-' starting with a letter or digit"
        if agent_id in state.agents:
            return f"agent {agent_id!r} already registered"
        if check_signature and not verify_action_signature(signed, body.action.public_key):
            return f"bad signature for agent {agent_id!r}"
        if body.nonce < 0:
            return f"nonce must be >= 0, got {body.nonce}"
        return None
    agent = state.agents.get(agent_id)
    if agent is None:
        return f"unknown agent {agent_id[:64]!r}: register it first with register_agent"
    if check_signature and not verify_action_signature(signed, agent.public_key):
        return f"bad signature for agent {agent_id!r}"
    if body.nonce <= agent.last_nonce:
        return (
            f"nonce {body.nonce} already used by agent {agent_id!r} (last nonce {agent.last_nonce}); "
            f"use a nonce above {agent.last_nonce}"
        )
    return None
