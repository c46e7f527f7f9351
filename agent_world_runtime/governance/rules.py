"""Governance transitions (docs/governance.md): proposals, shadow runs, votes, tallies and the
application of a manifest. Placeholder until the lifecycle lands: proposals are refused."""

from __future__ import annotations

from typing import Any

from ..rules import ActionContext, EventSpec, Rejected
from ..state import WorldState


def _refuse(*_: Any) -> list[EventSpec]:
    raise Rejected("governance proposals are not accepted by this version")


def apply_propose_update(state: WorldState, sandbox: Any, ctx: ActionContext, action: Any) -> list[EventSpec]:
    return _refuse()


def apply_propose_patch(state: WorldState, sandbox: Any, ctx: ActionContext, action: Any) -> list[EventSpec]:
    return _refuse()


def apply_propose_rollback(state: WorldState, sandbox: Any, ctx: ActionContext, action: Any) -> list[EventSpec]:
    return _refuse()


def apply_vote(state: WorldState, ctx: ActionContext, action: Any) -> list[EventSpec]:
    return _refuse()


def end_block(state: WorldState, sandbox: Any, height: int) -> list[EventSpec]:
    return []
