"""Admission of a signed action: chain id, identity, signature and nonce (see the ``actions``
module docstring for the signed envelope, and docs/architecture.md, "The path of one action").

Rules, checked in this order; the first one that fails gives the refusal:

1. ``body.chain_id`` equals the world's chain id (``WRONG_CHAIN``).
2. ``RegisterAgent``: the agent id matches ``AGENT_ID_RE`` (``BAD_AGENT_ID``) and is not
   registered yet (``ALREADY_REGISTERED``); the signature is checked against the public key the
   action carries (``BAD_SIGNATURE``); the nonce must be >= 0 (``NEGATIVE_NONCE``).
   Any other action: the agent must be registered (``UNKNOWN_AGENT``); the signature is checked
   against its key (``BAD_SIGNATURE``).
3. The nonce is strictly greater than the agent's ``last_nonce`` (gaps allowed); anything else is
   a replay (``NONCE_REPLAYED``).

``admission_refusal`` returns None when all hold, else a ``Refusal``: a ``RefusalCode`` set by the
rule that failed, and a human message saying what was wrong and, where the client can fix it, what
to do. The message is what a rejected action's ``domain.action_rejected`` event records as its
``reason``, so its text is part of the state root and must not change. The function reads state
and never changes it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .actions import AGENT_ID_RE, RegisterAgent, SignedAction, verify_action_signature
from .state import WorldState


class RefusalCode(enum.StrEnum):
    """Why a signed action was refused admission; the value is a stable machine-readable code."""

    WRONG_CHAIN = "wrong_chain"
    """``body.chain_id`` is not this world's chain id: the action was signed for another chain."""

    BAD_AGENT_ID = "bad_agent_id"
    """A ``RegisterAgent`` names an agent id that does not match ``AGENT_ID_RE``."""

    ALREADY_REGISTERED = "already_registered"
    """A ``RegisterAgent`` names an agent id that is already registered."""

    BAD_SIGNATURE = "bad_signature"
    """The Ed25519 signature does not verify against the agent's public key (for ``RegisterAgent``,
    the key the action carries)."""

    NEGATIVE_NONCE = "negative_nonce"
    """A ``RegisterAgent`` carries a nonce below 0."""

    UNKNOWN_AGENT = "unknown_agent"
    """An action other than ``RegisterAgent`` names an agent that is not registered."""

    NONCE_REPLAYED = "nonce_replayed"
    """The nonce is not above the agent's ``last_nonce``: the action, or one with the same nonce,
    was already applied."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused admission: ``code`` names the rule that failed; ``message`` is the human text
    (what was wrong and, where the client can fix it, what to do), recorded verbatim as the
    ``reason`` of a ``domain.action_rejected`` event."""

    code: RefusalCode
    message: str


def admission_refusal(state: WorldState, signed: SignedAction, *, check_signature: bool = True) -> Refusal | None:
    """Return None if ``signed`` passes the rules above against ``state``, else the ``Refusal`` of
    the first rule that fails. ``check_signature=False`` skips the signature check (for a caller
    that already verified it). Never raises for bad input; reads ``state`` only."""
    body = signed.body
    agent_id = body.agent_id
    if body.chain_id != state.meta.chain_id:
        return Refusal(
            RefusalCode.WRONG_CHAIN,
            f"wrong chain id {body.chain_id[:64]!r} (this world is {state.meta.chain_id!r}); sign for this chain",
        )
    if isinstance(body.action, RegisterAgent):
        if not AGENT_ID_RE.fullmatch(agent_id):
            return Refusal(
                RefusalCode.BAD_AGENT_ID,
                f"invalid agent id {agent_id[:64]!r}: use 1-64 characters of a-z, 0-9, '_', '.', '-' "
                f"starting with a letter or digit",
            )
        if agent_id in state.agents:
            return Refusal(RefusalCode.ALREADY_REGISTERED, f"agent {agent_id!r} already registered")
        if check_signature and not verify_action_signature(signed, body.action.public_key):
            return Refusal(RefusalCode.BAD_SIGNATURE, f"bad signature for agent {agent_id!r}")
        if body.nonce < 0:
            return Refusal(RefusalCode.NEGATIVE_NONCE, f"nonce must be >= 0, got {body.nonce}")
        return None
    agent = state.agents.get(agent_id)
    if agent is None:
        return Refusal(
            RefusalCode.UNKNOWN_AGENT,
            f"unknown agent {agent_id[:64]!r}: register it first with register_agent",
        )
    if check_signature and not verify_action_signature(signed, agent.public_key):
        return Refusal(RefusalCode.BAD_SIGNATURE, f"bad signature for agent {agent_id!r}")
    if body.nonce <= agent.last_nonce:
        return Refusal(
            RefusalCode.NONCE_REPLAYED,
            f"nonce {body.nonce} already used by agent {agent_id!r} (last nonce {agent.last_nonce}); "
            f"use a nonce above {agent.last_nonce}",
        )
    return None
