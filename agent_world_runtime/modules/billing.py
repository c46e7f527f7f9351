"""Fee formulas of module calls (docs/module-abi.md, "Billing"). Pure integer functions shared by the
router (which bills calls) and the lifecycle actions (which check a payer before activating an
instance)."""

from __future__ import annotations

MFUEL = 1_000_000


def compute_fee(input_bytes: int, output_bytes: int, effects: int, emits: int) -> int:
    """Return the compute fee (resource ``data``) of a call: ceil(in/1024) + ceil(out/1024) +
    2*effects + emits (docs/module-abi.md, "Billing")."""
    return -(-input_bytes // 1024) + -(-output_bytes // 1024) + 2 * effects + emits


def electricity_fee(effects: int, emits: int, new_state: bool) -> int:
    """Return the electricity fee of a call: 1 + effects + emits + (1 if it wrote new state)."""
    return 1 + effects + emits + (1 if new_state else 0)


def gas_fee(gas_used: int, price_per_mfuel: int) -> int:
    """Return the gas fee (resource ``data``) of ``gas_used`` fuel units at ``price_per_mfuel``
    data per million fuel: ceil(gas_used * price / 1_000_000), in integers. 0 for 0 fuel."""
    return -(-gas_used * price_per_mfuel // MFUEL)


def min_call_fees(max_gas: int, price_per_mfuel: int) -> tuple[int, int]:
    """Return ``(data, electricity)`` the payer must hold before the cheapest possible call of an
    instance whose capped limit is ``max_gas`` starts: the base fee of an input of at most
    1 KiB (1 data, 1 electricity) plus the gas fee of ``max_gas``. A real call's input may be
    larger; the router checks the exact amount before each call."""
    return compute_fee(1, 0, 0, 0) + gas_fee(max_gas, price_per_mfuel), electricity_fee(0, 0, False)
