"""World rules fixed at genesis (``genesis.json`` → ``world``)."""

from __future__ import annotations

import msgspec

from .modules.manifest import ModuleLimitsMax

#: The toolchain names a genesis may list.
TOOLCHAIN_NAMES = ("c", "rust")


class Toolchain(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A compiler the chain builds module sources with (genesis ``world.toolchains``): ``name`` is
    ``"c"`` (C through ``ziglang``'s clang, wasm32-freestanding) or ``"rust"`` (``rustc`` with the
    wasm32-unknown-unknown std); ``version`` is the compiler's own version text; ``compiler_sha256``
    is the hex sha256 of the compiler executable's bytes (for Rust, the sha256 of the executable's
    and ``librustc_driver``'s digests, since Debian's ``rustc`` is a stub). A validator builds only with a toolchain
    whose three fields equal its own (``agent_world_node.builds``)."""

    name: str
    version: str
    compiler_sha256: str


class WorldParams(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """World rules. Units: resource units; grid coordinates are integers in ``[-grid_size, grid_size]``
    on each of the three axes. A move costs ``move_cost_per_step`` electricity per unit of Manhattan
    distance; a harvest yields ``harvest_amount`` electricity, at most once per ``harvest_interval``
    heights per agent.

    Action fees (electricity, docs/fees.md): every committed action pays
    ``fee_base + ceil(payload_bytes * fee_per_kib / 1024)`` plus its kind's surcharge
    (``create_agent_fee``, ``module_deploy_fee``, ``module_compile_fee``, ``module_install_fee``),
    charged before the action is validated, so a rejected action pays too. A new agent starts with
    what its creator gives it and nothing else.

    Module calls (data, docs/module-abi.md, "Billing"): besides the seed's compute and electricity
    fees, a call pays ``ceil(gas_used * gas_price_per_mfuel / 1_000_000)`` data for the fuel it
    used. ``module_effect_max_amount`` is the policy ceiling on the amount of one module
    ``transfer_resource`` effect (docs/module-abi.md, "Capabilities and policy").
    ``module_limits_max`` caps every manifest's limits before each call; it is a genesis parameter,
    so every node applies the same caps.

    Builds from source (docs/module-abi.md, "Compiling from source"): ``toolchains`` are the
    compilers the chain accepts (none: only WAT sources compile); a build request not settled by
    validator attestations within ``build_deadline_heights`` heights fails."""

    move_cost_per_step: int = 1
    harvest_amount: int = 5
    harvest_interval: int = 10
    grid_size: int = 1000
    fee_base: int = 1
    fee_per_kib: int = 1
    create_agent_fee: int = 20
    module_deploy_fee: int = 5
    module_compile_fee: int = 5
    module_install_fee: int = 2
    gas_price_per_mfuel: int = 10
    module_effect_max_amount: int = 100
    module_limits_max: ModuleLimitsMax = msgspec.field(default_factory=ModuleLimitsMax)
    build_deadline_heights: int = 1500
    toolchains: list[Toolchain] = []
    create_validator_fee: int = 100
    proposal_fee: int = 50


class StakingParams(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Proof-of-stake rules (manifest section ``staking``; docs/staking.md). Stake is bonded
    electricity; heights and epochs are the chain's (``epoch = height // epoch_length``).

    The set of epoch ``e + 2`` is computed at the end of epoch ``e``: validators that are not
    jailed and whose bond is at least ``min_bond``, the ``max_validators`` largest bonds (ties by
    id), each with voting power ``min(bond, max_power_percent% of the chosen bonds' total)``
    (100: no cap). Unbonded stake returns ``unbonding_epochs`` epochs after the epoch of the
    unbond, at that epoch's end. A double sign proved by evidence burns ``slash_double_sign_percent``
    of the validator's bonds (and of its unbondings begun at or after the offence) and jails it
    for ``double_sign_jail_heights``; evidence older than ``evidence_max_age_heights`` is refused.
    A validator of the set that signed fewer than ``downtime_min_signed_percent`` of an epoch's
    commits is jailed for ``downtime_jail_heights`` without a slash. ``max_bonds_per_validator``
    bounds the bonders of one validator, ``max_unbonding_entries`` the unbondings one agent has
    pending from one validator per release epoch."""

    max_validators: int = 100
    min_bond: int = 1
    max_power_percent: int = 100
    unbonding_epochs: int = 2
    slash_double_sign_percent: int = 5
    double_sign_jail_heights: int = 100
    downtime_min_signed_percent: int = 50
    downtime_jail_heights: int = 50
    evidence_max_age_heights: int = 1000
    max_bonds_per_validator: int = 100
    max_unbonding_entries: int = 7


class GovernanceParams(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Governance rules (manifest section ``governance``; docs/governance.md). A proposal is
    voted for ``voting_period_heights`` heights by the validators of the set in force (each with
    its voting power). At the end it passes when the power that voted is at least
    ``quorum_percent`` of the set's total and the ``yes`` power is more than ``threshold_percent``
    of the ``yes`` plus ``no`` power; it is then applied at that height. Without quorum it
    expires; otherwise it is rejected. ``max_pending`` bounds the proposals open at once."""

    voting_period_heights: int = 100
    quorum_percent: int = 34
    threshold_percent: int = 50
    max_pending: int = 16


class GenesisAgent(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """An agent that exists from genesis (``genesis.json`` → ``agents``): the only agents nobody
    paid to create. ``public_key`` is its Ed25519 public key in hex (64 characters); balances in
    resource units; ``position`` on the grid."""

    agent_id: str
    public_key: str
    electricity: int = 0
    data: int = 0
    position: tuple[int, int, int] = (0, 0, 0)
