"""The import graph has no cycles, module by module, across all five packages (the layers between
packages are import-linter contracts in pyproject.toml, also run by ``make test``). Imports under
``TYPE_CHECKING`` and inside functions count: a cycle hidden there is still a cycle to a reader."""

from __future__ import annotations

import grimp

PACKAGES = ("agent_world_runtime", "agent_world_node", "agent_world_client", "agent_world_agents", "agent_world_tools")


def find_cycle(graph: grimp.ImportGraph) -> list[str] | None:
    """One import cycle among the graph's modules (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for nxt in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph.modules):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_no_module_level_import_cycles():
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False)
    assert find_cycle(graph) is None


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False)
    graph.add_import(importer="agent_world_runtime.codec", imported="agent_world_runtime.world")
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]
