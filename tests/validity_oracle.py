"""A test driver's valid(v): wraps a ``ConsensusCore`` so that every ``ValidateBlock`` effect it
emits is answered at once with ``BlockValidity(hash, validate(block))`` (as the replica does), and
the answer's effects take its place in the returned list. Tests of the consensus rules can then
feed inputs and inspect effects as if validity were a pure function."""

from __future__ import annotations

from collections.abc import Callable

from agent_world_node.consensus import BlockValidity, ConsensusCore, ValidateBlock
from agent_world_node.types import Block


def accept(block: Block) -> bool:
    return True


def with_validity(core: ConsensusCore, validate: Callable[[Block], bool] | None = None) -> ConsensusCore:
    """Make ``core`` answer its own ``ValidateBlock`` effects with ``validate`` (default: every block
    is valid); returns ``core``. ``validator.asked`` counts the questions (on the core as
    ``validity_asked``)."""
    check = validate or accept
    handle, start_height, resume = core.handle, core.start_height, core.resume
    core.validity_asked = []  # type: ignore[attr-defined]

    def answered(effects: list) -> list:
        out, queue = [], list(effects)
        while queue:
            eff = queue.pop(0)
            if isinstance(eff, ValidateBlock):
                core.validity_asked.append(eff.block.hash())  # type: ignore[attr-defined]
                queue.extend(handle(BlockValidity(eff.block.hash(), bool(check(eff.block)))))
            else:
                out.append(eff)
        return out

    core.handle = lambda inp: answered(handle(inp))  # type: ignore[method-assign]
    core.start_height = lambda *a, **kw: answered(start_height(*a, **kw))  # type: ignore[method-assign]
    core.resume = lambda *a, **kw: answered(resume(*a, **kw))  # type: ignore[method-assign]
    return core
