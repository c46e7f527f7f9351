"""Action fees: what every committed action costs its signer (docs/fees.md).

The fee of an action is paid in electricity by the agent that signed it, before the action is
validated by the world rules, so an action the world then rejects has paid too (the Cosmos SDK's
ante handler, which deducts fees before the message runs, is the model):

    fee = fee_base + ceil(payload_bytes * fee_per_kib / 1024) + surcharge(kind)

``payload_bytes`` is the length of the action's canonical encoding (the consensus payload). The
surcharge is ``create_agent_fee`` for ``create_agent``, ``module_deploy_fee``,
``module_compile_fee`` and ``module_install_fee`` for the module lifecycle actions,
``create_validator_fee`` for ``create_validator``, ``proposal_fee`` for each governance proposal,
0 otherwise.
All parameters are genesis ``WorldParams``; every node computes the same fee. A validator's
``attest_build`` pays nothing: the build's requester paid for it, and each validator attests a
build once (``modules.builds``).
"""

from __future__ import annotations

from .actions import (
    Action,
    AttestBuild,
    CompileModuleArtifactFromSource,
    CreateAgent,
    CreateValidator,
    DeployModuleArtifact,
    InstallModuleFromArtifact,
    ProposeManifestPatch,
    ProposeManifestUpdate,
    ProposeRollback,
)
from .params import WorldParams


def surcharge(params: WorldParams, action: Action) -> int:
    """Return the kind surcharge of ``action`` in electricity (see the module docstring)."""
    if isinstance(action, CreateAgent):
        return params.create_agent_fee
    if isinstance(action, DeployModuleArtifact):
        return params.module_deploy_fee
    if isinstance(action, CompileModuleArtifactFromSource):
        return params.module_compile_fee
    if isinstance(action, InstallModuleFromArtifact):
        return params.module_install_fee
    if isinstance(action, CreateValidator):
        return params.create_validator_fee
    if isinstance(action, (ProposeManifestUpdate, ProposeManifestPatch, ProposeRollback)):
        return params.proposal_fee
    return 0


def action_fee(params: WorldParams, action: Action, payload_bytes: int) -> int:
    """Return the fee, in electricity, of ``action`` whose canonical payload is ``payload_bytes``
    long: ``fee_base + ceil(payload_bytes * fee_per_kib / 1024) + surcharge`` (0 for a build
    attestation). Raises ValueError for a negative length."""
    if payload_bytes < 0:
        raise ValueError(f"payload_bytes must be >= 0, got {payload_bytes}")
    if isinstance(action, AttestBuild):
        return 0
    return params.fee_base + -(-payload_bytes * params.fee_per_kib // 1024) + surcharge(params, action)
