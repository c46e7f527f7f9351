"""The one place where this node's execution results are compared with others'.

Three sources carry another node's execution hashes (state root and execution block hash) for a
height, and each comparison goes through ``ExecutionCheck.compare``:

- a proposal's header carries its proposer's hashes for the previous height: a correct validator
  prevotes only for a block whose hashes equal its own (``check_proposal``; part of valid(v));
- a peer's commit announcement or synced block carries the peer's hashes for a height we may have
  executed (``check_peer``): a difference is logged and counted, nothing else;
- a committed block (certified by more than 2/3 of the stake, so checked by at least one correct
  validator) carries the quorum's hashes for the previous height (``check_quorum``): if ours
  differ, this node's execution diverged and the replica stops signing.

Every difference is logged with both roots and counted in ``mismatches`` and
``awnode_execution_mismatches``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import structlog

from ..execution import NodeRuntimeExecutionDriver
from ..metrics import NodeMetrics
from ..store import NodeStore
from ..types import BlockHeader, ExecutionHashes


@dataclass(frozen=True, slots=True)
class Divergence:
    """This node's execution disagrees with the quorum's: a block committed at ``height + 1``
    carries ``quorum_root`` as the execution state root of ``height``, and ours is ``our_root``."""

    height: int
    our_root: bytes
    quorum_root: bytes


MAX_PEER_REPORTS = 256  # peers whose last announced execution hashes are kept (oldest dropped)


@dataclass(frozen=True, slots=True)
class PeerExecution:
    """A peer's last announced execution hashes, and whether they equal ours for that height
    (``agrees`` None when we have not executed it)."""

    hashes: ExecutionHashes
    agrees: bool | None


class ExecutionCheck:
    """Compares execution hashes with this node's (see the module docstring)."""

    def __init__(
        self, driver: NodeRuntimeExecutionDriver, store: NodeStore, metrics: NodeMetrics, log: structlog.typing.FilteringBoundLogger
    ) -> None:
        self._driver = driver
        self._store = store
        self._metrics = metrics
        self._log = log
        self.mismatches = 0
        self.peer_reports: OrderedDict[str, PeerExecution] = OrderedDict()

    def ours(self, height: int) -> ExecutionHashes | None:
        """This node's execution hashes of ``height``, or None when it has not executed it."""
        d = self._driver
        if height == d.last_height:
            return ExecutionHashes(d.last_height, d.last_block_hash, d.last_state_root)
        record = self._store.get_execution(height)
        return record.hashes() if record is not None else None

    def compare(self, theirs: ExecutionHashes) -> ExecutionHashes | None:
        """Return our hashes of ``theirs.execution_height`` when they differ from ``theirs`` (root
        or execution block hash); None when they are equal or we have not executed that height."""
        ours = self.ours(theirs.execution_height)
        if ours is None:
            return None
        if (ours.execution_state_root, ours.execution_block_hash) == (
            theirs.execution_state_root,
            theirs.execution_block_hash,
        ):
            return None
        return ours

    def check_proposal(self, header: BlockHeader) -> str | None:
        """Part of valid(v): the proposer's execution hashes of the previous height must be ours.
        Returns the problem, or None."""
        if header.last_execution_height != self._driver.last_height:
            return f"carries execution height {header.last_execution_height}, ours is {self._driver.last_height}"
        ours = self.compare(_carried(header))
        if ours is None:
            return None
        self._mismatch("execution_root_mismatch", ours, _carried(header), proposer_id=header.proposer[:16])
        return "execution state root of the previous height differs from ours"

    def check_peer(self, theirs: ExecutionHashes | None, peer: str) -> None:
        """Compare a peer's announced hashes with ours; log and count a difference. The last
        report of each peer is kept in ``peer_reports`` (for ``/v1/status``)."""
        if theirs is None:
            return
        ours = self.compare(theirs)
        agrees = None if self.ours(theirs.execution_height) is None else ours is None
        self.peer_reports.pop(peer, None)
        self.peer_reports[peer] = PeerExecution(theirs, agrees)
        while len(self.peer_reports) > MAX_PEER_REPORTS:
            self.peer_reports.popitem(last=False)
        if ours is not None:
            self._mismatch("peer_execution_mismatch", ours, theirs, peer=peer)

    def check_quorum(self, header: BlockHeader) -> Divergence | None:
        """The divergence a committed block reveals (see the module docstring), or None. Only
        compares when the block carries hashes of our last executed height."""
        if header.last_execution_height != self._driver.last_height:
            return None
        theirs = _carried(header)
        ours = self.compare(theirs)
        if ours is None:
            return None
        self._mismatch("quorum_execution_mismatch", ours, theirs, proposer_id=header.proposer[:16])
        return Divergence(theirs.execution_height, ours.execution_state_root, theirs.execution_state_root)

    def _mismatch(self, event: str, ours: ExecutionHashes, theirs: ExecutionHashes, **fields: str) -> None:
        self.mismatches += 1
        self._metrics.execution_mismatches.inc()
        self._log.error(
            event,
            height=ours.execution_height,
            ours=ours.execution_state_root.hex(),
            theirs=theirs.execution_state_root.hex(),
            ours_block_hash=ours.execution_block_hash.hex(),
            theirs_block_hash=theirs.execution_block_hash.hex(),
            **fields,
        )


def _carried(header: BlockHeader) -> ExecutionHashes:
    return ExecutionHashes(
        header.last_execution_height, header.last_execution_block_hash, header.last_execution_state_root
    )
