"""Client actions and their signed envelope (docs/architecture.md, "The path of one action").

An agent signs ``ActionBody {chain_id, agent_id, nonce, action}``; the ``SignedAction`` is encoded
as canonical msgpack and that encoding is the consensus ``payload`` (``action_id = sha256(payload)``).
The signature covers ``ACTION_SIGN_DOMAIN || encode(body)`` and is verified against the key the
agent was created with. Agents exist from genesis or are created by another agent
(``CreateAgent``), who pays for them. Nonces are per agent and strictly increasing (gaps
allowed); a nonce at or below the agent's last used nonce is a replay. Every committed action pays
a fee (``fees``).
"""

from __future__ import annotations

import re
from typing import Union

import msgspec

from .codec import DecodeError, decode, decode_json, encode
from .crypto import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, SigningKey, sha256, verify
from .governance.manifest import Manifest
from .governance.records import PatchOp
from .modules.manifest import ModuleManifest

ACTION_SIGN_DOMAIN = b"agent-world/action/v1\x00"
VALIDATOR_PROOF_DOMAIN = b"agent-world/validator-key/v1\x00"
MAX_ACTION_PAYLOAD_BYTES = 256 * 1024
AGENT_ID_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
AGENT_ID_RULE = "use 1-64 characters of a-z, 0-9, '_', '.', '-' starting with a letter or digit"
RESOURCE_KINDS = ("electricity", "data")
#: Largest nonce: msgpack encodes integers up to 2**64 - 1.
MAX_NONCE = (1 << 64) - 1
#: Largest transfer amount: no balance can exceed 2**63 - 1 (``rules.MAX_BALANCE``).
MAX_TRANSFER_AMOUNT = (1 << 63) - 1

Position = tuple[int, int, int]


class _Action(msgspec.Struct, forbid_unknown_fields=True, frozen=True, tag_field="type"):
    pass


class CreateAgent(_Action, frozen=True, tag="create_agent"):
    """Create agent ``agent_id`` with the Ed25519 ``public_key`` at ``position``, signed and paid
    for by an existing agent (the sponsor, the envelope's ``agent_id``): the sponsor pays the fee
    (``WorldParams.create_agent_fee`` on top of the base fee) and gives the new agent ``electricity``
    and ``data`` from its own balances. The new agent's first nonce is 1."""

    agent_id: str
    public_key: bytes
    position: Position = (0, 0, 0)
    electricity: int = 0
    data: int = 0


class MoveAgent(_Action, frozen=True, tag="move_agent"):
    """Move to ``to``; costs electricity in proportion to the Manhattan distance."""

    to: Position


class HarvestRadiation(_Action, frozen=True, tag="harvest_radiation"):
    """Gain electricity from the radiation at the agent's position (amount set by the world rules)."""


class TransferResource(_Action, frozen=True, tag="transfer_resource"):
    """Give ``amount`` (> 0) of resource ``kind`` (electricity or data) to agent ``to``."""

    to: str
    kind: str
    amount: int


class ModuleSourcePackage(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Module source: ``files`` maps relative paths to UTF-8 text; ``manifest_path`` names the JSON
    manifest among them."""

    manifest_path: str
    files: dict[str, str]


class CompileModuleArtifactFromSource(_Action, frozen=True, tag="compile_module_artifact_from_source"):
    """Compile ``source_package`` into an artifact published by this agent under ``module_id``."""

    module_id: str
    source_package: ModuleSourcePackage


class DeployModuleArtifact(_Action, frozen=True, tag="deploy_module_artifact"):
    """Publish ``wasm_bytes`` with ``manifest``; rejected unless ``sha256(wasm_bytes).hex() == wasm_hash``."""

    wasm_hash: str
    wasm_bytes: bytes
    manifest: ModuleManifest


class InstallModuleFromArtifact(_Action, frozen=True, tag="install_module_from_artifact"):
    """Install the artifact ``wasm_hash`` as a new instance owned by this agent (the artifact's
    publisher only). ``instance_id`` defaults to ``<module_id>@<agent_id>``.

    ``install_target``: ``""``/``self_agent`` (routed every matching event and action),
    ``agent:<agent_id>`` (only those of that agent) or ``location:<x>,<y>,<z>`` (only those of
    agents standing there). ``grant_caps``: capabilities the installer grants the instance over
    its own agent; each must be among the manifest's ``required_caps``."""

    wasm_hash: str
    instance_id: str = ""
    activate: bool = True
    install_target: str = ""
    grant_caps: list[str] = []


class UpgradeModuleFromArtifact(_Action, frozen=True, tag="upgrade_module_from_artifact"):
    """Move instance ``instance_id`` (owned by the signing agent, the upgrader) to the artifact
    ``wasm_hash``, whose manifest is the next manifest; ``activate`` sets the instance's active
    flag. Rules (docs/module-abi.md, "Upgrades"): owner only, same module id, same
    interface_version and kind, no export removed, every existing subscription still covered."""

    instance_id: str
    wasm_hash: str
    activate: bool = True


class SetModuleInstanceActive(_Action, frozen=True, tag="set_module_instance_active"):
    """Turn instance ``instance_id`` (owned by the signing agent) on (``active=True``: routed again)
    or off. Turning it on requires its payer to hold the minimum pre-call fees now
    (docs/module-abi.md, "Billing")."""

    instance_id: str
    active: bool



class AttestBuild(_Action, frozen=True, tag="attest_build"):
    """A validator's result of building the pending build ``build_id`` (docs/module-abi.md,
    "Compiling from source"). Signed with the validator's consensus key; the envelope's
    ``agent_id`` is the validator id (its public key in hex) and its nonce is not used (a validator
    attests each build once). ``code`` is ``"OK"`` with the ``wasm_hash`` it built (and the bytes,
    unless the world already holds bytes for that hash in this build), or a build failure code
    with no hash or bytes. Attestations pay no fee: each build is paid for by its requester and
    draws at most one attestation per validator."""

    build_id: str
    code: str
    wasm_hash: str = ""
    wasm_bytes: bytes = b""


class CreateValidator(_Action, frozen=True, tag="create_validator"):
    """Make the signing agent (the operator) a validator candidate with the Ed25519 consensus
    key ``validator_key`` (32 bytes; the validator id is its hex), bonding ``bond`` electricity
    from its balance (at least the manifest's ``staking.min_bond``). ``proof`` is the consensus
    key's signature of ``VALIDATOR_PROOF_DOMAIN || chain_id || operator agent id``
    (``validator_key_proof``), so nobody registers a key they do not hold. It joins the set of
    epoch ``e + 2`` when created in epoch ``e`` (docs/staking.md)."""

    validator_key: bytes
    bond: int
    proof: bytes
    name: str = ""


class Bond(_Action, frozen=True, tag="bond"):
    """Bond ``amount`` (> 0) electricity of the signer to validator ``validator_id`` (its own, or
    another's: a delegation)."""

    validator_id: str
    amount: int


class Unbond(_Action, frozen=True, tag="unbond"):
    """Start returning ``amount`` (> 0) of the signer's bond to ``validator_id``; it comes back at
    the end of epoch ``e + unbonding_epochs`` (``e``: this block's epoch) unless slashed first."""

    validator_id: str
    amount: int


class Unjail(_Action, frozen=True, tag="unjail"):
    """The operator asks for its jailed validator ``validator_id`` back, at or after the height
    its jail ends; it is then eligible for the next set computed."""

    validator_id: str


class ProposeManifestUpdate(_Action, frozen=True, tag="propose_manifest_update"):
    """Propose replacing the whole manifest with ``manifest`` (its ``version`` is ignored: an
    applied proposal makes the next version). Pays ``proposal_fee`` (docs/governance.md)."""

    manifest: Manifest
    title: str = ""


class ProposeManifestPatch(_Action, frozen=True, tag="propose_manifest_patch"):
    """Propose a change of the manifest as JSON Patch operations ``ops`` (``/module_changes``
    included). Pays ``proposal_fee``."""

    ops: list[PatchOp]
    title: str = ""


class ProposeRollback(_Action, frozen=True, tag="propose_rollback"):
    """Propose restoring manifest version ``version`` (as a new version; history stays)."""

    version: int
    title: str = ""


class VoteProposal(_Action, frozen=True, tag="vote_proposal"):
    """The operator of validator ``validator_id`` votes ``option`` (``yes``, ``no`` or
    ``abstain``) on proposal ``proposal_id`` with that validator's voting power; once."""

    proposal_id: int
    validator_id: str
    option: str


Action = Union[
    AttestBuild,
    CreateValidator,
    Bond,
    Unbond,
    Unjail,
    ProposeManifestUpdate,
    ProposeManifestPatch,
    ProposeRollback,
    VoteProposal,
    CreateAgent,
    MoveAgent,
    HarvestRadiation,
    TransferResource,
    CompileModuleArtifactFromSource,
    DeployModuleArtifact,
    InstallModuleFromArtifact,
    UpgradeModuleFromArtifact,
    SetModuleInstanceActive,
]


class ActionBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What an agent signs."""

    chain_id: str
    agent_id: str
    nonce: int
    action: Action


class SignedAction(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """An action body and its 64-byte Ed25519 signature."""

    body: ActionBody
    signature: bytes


def action_kind(action: Action) -> str:
    """Return the wire tag of ``action`` (``"move_agent"``, ...)."""
    tag = type(action).__struct_config__.tag
    if not isinstance(tag, str):  # every action class sets a string tag
        raise TypeError(f"{type(action).__name__} is not an action")
    return tag


def sign_action(key: SigningKey, chain_id: str, agent_id: str, nonce: int, action: Action) -> SignedAction:
    """Return ``action`` signed by ``key`` for agent ``agent_id`` with ``nonce`` on ``chain_id``."""
    body = ActionBody(chain_id=chain_id, agent_id=agent_id, nonce=nonce, action=action)
    return SignedAction(body=body, signature=key.sign(ACTION_SIGN_DOMAIN, encode(body)))


def validator_key_proof(validator_key: SigningKey, chain_id: str, operator: str) -> bytes:
    """Return the ``CreateValidator.proof`` of ``validator_key`` for agent ``operator`` on ``chain_id``."""
    return validator_key.sign(VALIDATOR_PROOF_DOMAIN, encode([chain_id, operator]))


def verify_validator_key_proof(public_key: bytes, chain_id: str, operator: str, proof: bytes) -> bool:
    """True iff ``proof`` is ``public_key``'s ``validator_key_proof`` for ``operator`` on ``chain_id``."""
    return verify(public_key, VALIDATOR_PROOF_DOMAIN, encode([chain_id, operator]), proof)


def verify_action_signature(signed: SignedAction, public_key: bytes) -> bool:
    """Return True iff ``signed.signature`` is ``public_key``'s signature of the body."""
    return verify(public_key, ACTION_SIGN_DOMAIN, encode(signed.body), signed.signature)


def encode_signed_action(signed: SignedAction) -> bytes:
    """Return the canonical payload bytes of ``signed`` (the consensus ``payload``)."""
    return encode(signed)


def decode_signed_action(payload: bytes) -> SignedAction:
    """Decode a consensus payload; raises ``codec.DecodeError`` if malformed or over
    MAX_ACTION_PAYLOAD_BYTES."""
    return decode(payload, SignedAction, max_size=MAX_ACTION_PAYLOAD_BYTES)


def decode_signed_action_json(data: bytes | str) -> SignedAction:
    """Decode the JSON form (bytes fields as base64) used by the HTTP API and check the fields
    that need no world state (``static_action_problem``). Raises ``codec.DecodeError`` naming
    the field that is wrong and what to send instead."""
    signed = decode_json(data, SignedAction)
    problem = static_action_problem(signed)
    if problem is not None:
        raise DecodeError(f"invalid SignedAction: {problem}")
    return signed


def static_action_problem(signed: SignedAction) -> str | None:
    """Return why ``signed`` can never be admitted whatever the world state, or None.

    Checks: a 64-byte signature; a valid agent id; for ``CreateAgent`` a 32-byte public key, a
    valid new agent id and endowments in 0..``MAX_TRANSFER_AMOUNT``; a nonce in
    0..``MAX_NONCE``; a ``TransferResource`` amount in 1..``MAX_TRANSFER_AMOUNT`` of a kind in
    ``RESOURCE_KINDS``; and every integer within what canonical msgpack can encode (-2**63 ..
    2**64 - 1). JSON allows integers of any size, and one outside that range cannot be encoded
    into a consensus payload. Used on client input only (the HTTP API); the consensus path keeps
    the world rules' own rejections, so which blocks are valid does not change.
    """
    if len(signed.signature) != SIGNATURE_SIZE:
        return (
            f"signature must be {SIGNATURE_SIZE} bytes (Ed25519), got {len(signed.signature)}; "
            "sign encode(body) with the agent key (actions.sign_action)"
        )
    body = signed.body
    if not 0 <= body.nonce <= MAX_NONCE:
        return f"body.nonce must be an integer in 0..{MAX_NONCE}, got {body.nonce}; use the agent's last nonce + 1"
    action = body.action
    if not AGENT_ID_RE.fullmatch(body.agent_id):
        return f"body.agent_id {body.agent_id[:64]!r} is not a valid agent id: {AGENT_ID_RULE}"
    if isinstance(action, CreateAgent):
        if len(action.public_key) != PUBLIC_KEY_SIZE:
            return (
                f"body.action.public_key must be {PUBLIC_KEY_SIZE} bytes (an Ed25519 public key), "
                f"got {len(action.public_key)}"
            )
        if not AGENT_ID_RE.fullmatch(action.agent_id):
            return f"body.action.agent_id {action.agent_id[:64]!r} is not a valid agent id: {AGENT_ID_RULE}"
        if not (0 <= action.electricity <= MAX_TRANSFER_AMOUNT and 0 <= action.data <= MAX_TRANSFER_AMOUNT):
            return f"body.action.electricity and data must be integers in 0..{MAX_TRANSFER_AMOUNT}"
    if isinstance(action, TransferResource):
        if not 1 <= action.amount <= MAX_TRANSFER_AMOUNT:
            return (
                f"body.action.amount must be a positive integer up to {MAX_TRANSFER_AMOUNT}, "
                f"got {action.amount}"
            )
        if action.kind not in RESOURCE_KINDS:
            return f"body.action.kind must be one of {list(RESOURCE_KINDS)}, got {action.kind[:40]!r}"
    try:
        encode(signed)
    except OverflowError:
        return "an integer in the action is outside -2**63..2**64-1 and cannot be encoded; use smaller values"
    return None


def payload_hash(payload: bytes) -> bytes:
    """Return ``sha256(payload)``: the action id."""
    return sha256(payload)
