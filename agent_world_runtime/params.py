"""World rules fixed at genesis (``genesis.json`` → ``world``)."""

from __future__ import annotations

import msgspec


class WorldParams(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """World rules. Units: resource units; grid coordinates are integers in ``[-grid_size, grid_size]``
    on each of the three axes. A move costs ``move_cost_per_step`` electricity per unit of Manhattan
    distance; a harvest yields ``harvest_amount`` electricity."""

    initial_electricity: int = 100
    initial_data: int = 10
    move_cost_per_step: int = 1
    harvest_amount: int = 5
    grid_size: int = 1000
