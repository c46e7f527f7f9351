"""World rules fixed at genesis (``genesis.json`` → ``world``)."""

from __future__ import annotations

import msgspec

from .modules.manifest import ModuleLimitsMax


class WorldParams(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """World rules. Units: resource units; grid coordinates are integers in ``[-grid_size, grid_size]``
    on each of the three axes. A move costs ``move_cost_per_step`` electricity per unit of Manhattan
    distance; a harvest yields ``harvest_amount`` electricity.

    Module fees (electricity, charged to the acting agent before anything is written; an agent
    that cannot pay gets the action rejected): ``module_deploy_fee`` per DeployModuleArtifact,
    ``module_compile_fee`` per CompileModuleArtifactFromSource, ``module_install_fee`` per
    InstallModuleFromArtifact. ``module_effect_max_amount`` is the policy ceiling on the amount of
    one module ``transfer_resource`` effect (docs/module-abi.md, "Capabilities and policy").
    ``module_limits_max`` caps every manifest's limits before each call; it is a genesis parameter,
    so every node applies the same caps."""

    initial_electricity: int = 100
    initial_data: int = 1000
    move_cost_per_step: int = 1
    harvest_amount: int = 5
    grid_size: int = 1000
    module_deploy_fee: int = 5
    module_compile_fee: int = 5
    module_install_fee: int = 2
    module_effect_max_amount: int = 100
    module_limits_max: ModuleLimitsMax = msgspec.field(default_factory=ModuleLimitsMax)
