"""The agreement check of a local testnet: ``AgreementChecker`` compares, height by height from 1,
the ``execution_state_root`` that every node reports for each height all of them executed
(GET /v1/execution/{h}), and records the first height where they differ as a ``Mismatch``.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
import trio

from agent_world_client.client import ClientError, NodeClient, NotFound

from .processes import leaf_exceptions

log = structlog.get_logger(__name__)


@dataclass
class Mismatch:
    """The first height at which nodes disagree: ``roots`` maps node name to its
    execution_state_root (None when the node had no record for that height)."""

    height: int
    roots: dict[str, str | None]


class AgreementChecker:
    """Checks, height by height from 1, that every node reports the same ``execution_state_root``
    (GET /v1/execution/{h}). Incremental: ``check_up_to`` continues from ``checked_up_to``.

    After a mismatch it stops advancing; ``mismatch`` holds the first bad height. A node without a
    record for a height it should have executed counts as a mismatch (root None). Transport errors
    leave ``checked_up_to`` where it was and are counted in ``errors``.
    """

    def __init__(self, clients: dict[str, NodeClient], *, batch: int = 16) -> None:
        self.clients = clients
        self.batch = batch
        self.checked_up_to = 0
        self.mismatch: Mismatch | None = None
        self.errors = 0
        self.last_error: str | None = None

    async def _roots_at(self, height: int) -> dict[str, str | None]:
        roots: dict[str, str | None] = {}

        async def fetch(name: str, client: NodeClient) -> None:
            try:
                record = await client.execution(height)
                root = record.get("execution_state_root")
                roots[name] = root if isinstance(root, str) else None
            except NotFound:
                roots[name] = None

        async with trio.open_nursery() as nursery:
            for name, client in self.clients.items():
                nursery.start_soon(fetch, name, client)
        return roots

    async def check_up_to(self, height: int, *, max_heights: int | None = None) -> bool:
        """Check heights ``checked_up_to + 1 .. height`` (at most ``max_heights`` of them now).
        Returns False iff a mismatch is known. Never raises for node errors."""
        if self.mismatch is not None:
            return False
        target = height if max_heights is None else min(height, self.checked_up_to + max_heights)

        async def one(h: int, results: dict[int, dict[str, str | None]]) -> None:
            results[h] = await self._roots_at(h)

        while self.checked_up_to < target:
            heights = range(self.checked_up_to + 1, min(target, self.checked_up_to + self.batch) + 1)
            results: dict[int, dict[str, str | None]] = {}
            failure: list[BaseException] = []
            try:
                async with trio.open_nursery() as nursery:
                    for h in heights:
                        nursery.start_soon(one, h, results)
            except* ClientError as group:
                failure.extend(leaf_exceptions(group))
            if failure:
                self.errors += 1
                self.last_error = str(failure[0])
                return True
            for h in heights:
                roots = results[h]
                if None in roots.values() or len(set(roots.values())) > 1:
                    self.mismatch = Mismatch(height=h, roots=roots)
                    log.error("execution_state_roots_disagree", height=h, roots=roots)
                    return False
                self.checked_up_to = h
        return True
