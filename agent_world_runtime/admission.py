"""Admission of a signed action: chain id, identity, signature, nonce and fee (see the ``actions``
module docstring for the signed envelope, ``fees`` for the fee, and docs/architecture.md, "The path
of one action").

Rules, checked in this order; the first one that fails gives the refusal:

1. ``body.chain_id`` equals the world's chain id (``WRONG_CHAIN``).
2. The agent is registered (``UNKNOWN_AGENT``); the signature verifies against its key
   (``BAD_SIGNATURE``).
3. The nonce is strictly greater than the agent's ``last_nonce`` (gaps allowed); anything else is
   a replay (``NONCE_REPLAYED``).
4. The agent's electricity covers the action's fee on top of what it already owes
   (``INSUFFICIENT_FEE``): for the mempool, the fees of its pending actions; in a block, the fees
   of its earlier actions in that block (``BlockPlan``).

``admission_refusal`` returns None when all hold, else a ``Refusal``: a ``RefusalCode`` set by the
rule that failed, and a human message saying what was wrong and what to do. The message is what a
rejected action's ``domain.action_rejected`` event records as its ``reason``, so its text is part
of the state root and must not change. These functions read state and never change it.

A validator's ``AttestBuild`` follows its own rules instead of 2-4: the signer is a genesis
validator (``UNKNOWN_AGENT`` otherwise), the signature verifies against its consensus key, and
``modules.builds.attestation_problem`` finds nothing wrong (``ATTESTATION_REFUSED``: unknown or
settled build, already attested, bad hash or bytes). It pays no fee and uses no nonce.

``BlockPlan`` applies the same rules to the actions of one block in order, as CometBFT's CheckTx
does for a mempool: a block may only carry actions whose signer exists before the block, whose
nonces increase, and whose fees the signer can pay from its balance before the block, since every
fee of a block is taken before its first action runs. Proposers build blocks with it and validators
check blocks with it, so no action is committed for a signer that cannot pay.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .actions import AttestBuild, SignedAction, encode_signed_action, verify_action_signature
from .fees import action_fee
from .modules.builds import attestation_problem
from .staking.sets import active_powers
from .state import WorldState


class RefusalCode(enum.StrEnum):
    """Why a signed action was refused admission; the value is a stable machine-readable code."""

    WRONG_CHAIN = "wrong_chain"
    """``body.chain_id`` is not this world's chain id: the action was signed for another chain."""

    BAD_SIGNATURE = "bad_signature"
    """The Ed25519 signature does not verify against the agent's public key."""

    UNKNOWN_AGENT = "unknown_agent"
    """The signing agent is not registered."""

    NONCE_REPLAYED = "nonce_replayed"
    """The nonce is not above the agent's ``last_nonce``: the action, or one with the same nonce,
    was already applied."""

    ATTESTATION_REFUSED = "attestation_refused"
    """A build attestation that cannot apply now (unknown or settled build, attested twice, a hash
    without bytes, bytes that do not match)."""

    INSUFFICIENT_FEE = "insufficient_fee"
    """The agent's electricity does not cover the action's fee on top of the fees it already owes
    (its pending actions, or its earlier actions in the block)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused admission: ``code`` names the rule that failed; ``message`` is the human text
    (what was wrong and, where the client can fix it, what to do), recorded verbatim as the
    ``reason`` of a ``domain.action_rejected`` event."""

    code: RefusalCode
    message: str


def admission_refusal(state: WorldState, signed: SignedAction, *, check_signature: bool = True) -> Refusal | None:
    """Return None if ``signed`` passes rules 1-3 above against ``state``, else the ``Refusal`` of
    the first rule that fails. ``check_signature=False`` skips the signature check (for a caller
    that already verified it). Never raises for bad input; reads ``state`` only."""
    body = signed.body
    agent_id = body.agent_id
    if body.chain_id != state.meta.chain_id:
        return Refusal(
            RefusalCode.WRONG_CHAIN,
            f"wrong chain id {body.chain_id[:64]!r} (this world is {state.meta.chain_id!r}); sign for this chain",
        )
    if isinstance(body.action, AttestBuild):
        return _attestation_refusal(state, signed, check_signature)
    agent = state.agents.get(agent_id)
    if agent is None:
        return Refusal(
            RefusalCode.UNKNOWN_AGENT,
            f"unknown agent {agent_id[:64]!r}: an existing agent must create it first with create_agent",
        )
    if check_signature and not verify_action_signature(signed, agent.public_key):
        return Refusal(
            RefusalCode.BAD_SIGNATURE,
            f"bad signature for agent {agent_id!r}; sign the action body with the key the agent was created with",
        )
    if body.nonce <= agent.last_nonce:
        return Refusal(
            RefusalCode.NONCE_REPLAYED,
            f"nonce {body.nonce} already used by agent {agent_id!r} (last nonce {agent.last_nonce}); "
            f"use a nonce above {agent.last_nonce}",
        )
    return None


def _attestation_refusal(state: WorldState, signed: SignedAction, check_signature: bool) -> Refusal | None:
    validator = signed.body.agent_id
    if validator not in active_powers(state):
        return Refusal(RefusalCode.UNKNOWN_AGENT, f"{validator[:64]!r} is not a genesis validator; only validators attest builds")
    if check_signature and not verify_action_signature(signed, bytes.fromhex(validator)):
        return Refusal(RefusalCode.BAD_SIGNATURE, f"bad signature for validator {validator[:16]}; sign with its consensus key")
    assert isinstance(signed.body.action, AttestBuild)
    problem = attestation_problem(state, validator, signed.body.action)
    return None if problem is None else Refusal(RefusalCode.ATTESTATION_REFUSED, problem)


def signer_key(state: WorldState, signed: SignedAction) -> bytes | None:
    """The public key ``signed`` must carry a signature of: a validator's consensus key for an
    ``AttestBuild``, else the agent's key; None for an unknown signer."""
    agent_id = signed.body.agent_id
    if isinstance(signed.body.action, AttestBuild):
        return bytes.fromhex(agent_id) if agent_id in active_powers(state) else None
    agent = state.agents.get(agent_id)
    return agent.public_key if agent is not None else None


def fee_refusal(state: WorldState, signed: SignedAction, fee: int, owed: int) -> Refusal | None:
    """Return None if the signer of ``signed`` (registered in ``state``) holds at least
    ``owed + fee`` electricity, else an ``INSUFFICIENT_FEE`` refusal (rule 4)."""
    agent_id = signed.body.agent_id
    have = state.agents[agent_id].electricity
    if owed + fee <= have:
        return None
    pending = f" on top of {owed} owed for its earlier actions" if owed else ""
    return Refusal(
        RefusalCode.INSUFFICIENT_FEE,
        f"the fee of this action is {fee} electricity{pending} but agent {agent_id!r} has {have}; "
        "receive a transfer first (a harvest pays this fee too), or wait for its pending actions to commit",
    )


def payload_size(signed: SignedAction) -> int:
    """Return the length in bytes of the canonical payload of ``signed`` (what fees are based on)."""
    return len(encode_signed_action(signed))


class BlockPlan:
    """Rules 1-4 for the actions of one block, in block order, against ``state`` before the block.

    ``admit(signed, payload_bytes)`` returns None and counts the action in (its nonce becomes the
    signer's last, its fee is added to what the signer owes) when it may follow the actions
    admitted so far, else the ``Refusal`` (and the action is not counted). Signatures are not
    checked here (valid(v) and admission verify them). Reads ``state`` only."""

    def __init__(self, state: WorldState) -> None:
        self._state = state
        self._owed: dict[str, int] = {}
        self._last_nonce: dict[str, int] = {}
        self._attested: set[tuple[str, str]] = set()

    def admit(self, signed: SignedAction, payload_bytes: int) -> Refusal | None:
        """See the class docstring; ``payload_bytes`` is the length of the action's payload."""
        state = self._state
        refusal = admission_refusal(state, signed, check_signature=False)
        if refusal is not None:
            return refusal
        body = signed.body
        if isinstance(body.action, AttestBuild):
            key = (body.agent_id, body.action.build_id)
            if key in self._attested:
                return Refusal(RefusalCode.ATTESTATION_REFUSED,
                               f"validator {body.agent_id[:16]} attests build {body.action.build_id} twice in the block")
            self._attested.add(key)
            return None
        last = self._last_nonce.get(body.agent_id)
        if last is not None and body.nonce <= last:
            return Refusal(
                RefusalCode.NONCE_REPLAYED,
                f"nonce {body.nonce} of agent {body.agent_id!r} does not follow its nonce {last} earlier in the block",
            )
        fee = action_fee(state.manifest.params, body.action, payload_bytes)
        owed = self._owed.get(body.agent_id, 0)
        refusal = fee_refusal(state, signed, fee, owed)
        if refusal is not None:
            return refusal
        self._owed[body.agent_id] = owed + fee
        self._last_nonce[body.agent_id] = body.nonce
        return None
