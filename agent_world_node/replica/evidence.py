"""Equivocation evidence in blocks (docs/staking.md, "Slashing"): which evidence a proposer
includes, and the evidence rule of valid(v).

A node's consensus core records every double vote or double proposal it sees (``EvidenceFound``,
kept in the store). A proposer includes, in each block, up to ``MAX_BLOCK_EVIDENCE`` pieces the
executed world would still punish; every validator checks each piece before it votes for the block:
it decodes, proves equivocation by a member of the set in force at its height
(``consensus.evidence.verify_evidence``), is not older than ``evidence_max_age_heights``, was not
punished before, and is the only piece in the block for that (validator, height). Executing the
block then slashes and jails (``agent_world_runtime.staking.rules``), as CometBFT's evidence
module hands verified evidence to the application.
"""

from __future__ import annotations

from collections.abc import Callable

from agent_world_runtime import World
from agent_world_runtime.codec import DecodeError, decode, encode

from ..consensus.evidence import Evidence, InvalidEvidence, verify_evidence
from ..store import NodeStore
from ..types import MAX_BLOCK_EVIDENCE, MAX_EVIDENCE_BYTES, Block
from .sets import ValidatorSets

#: How many of the most recent stored pieces a proposer considers.
CANDIDATES = 64


def decode_evidence(raw: bytes) -> Evidence:
    """Decode one evidence encoding; raises ``DecodeError`` when malformed or too large."""
    return decode(raw, Evidence, max_size=MAX_EVIDENCE_BYTES)  # type: ignore[arg-type]


class BlockEvidence:
    """Evidence selection for proposals and its check in valid(v); ``chain_id`` signs the
    messages, ``sets`` gives the set at each height, ``world()`` the executed world."""

    def __init__(self, chain_id: str, sets: ValidatorSets, world: Callable[[], World], store: NodeStore) -> None:
        self._chain_id = chain_id
        self._sets = sets
        self._world = world
        self._store = store

    def piece_problem(self, ev: Evidence, height: int) -> str | None:
        """Why ``ev`` cannot be executed in block ``height`` (None if it can)."""
        vset = self._sets.at(ev.height)
        if vset is None:
            return f"the validator set of height {ev.height} is no longer known"
        try:
            verify_evidence(ev, self._chain_id, vset)
        except InvalidEvidence as exc:
            return f"evidence does not prove equivocation: {exc}"
        return self._world().evidence_problem(ev.validator, ev.height, height)

    def for_proposal(self, height: int) -> list[bytes]:
        """Up to ``MAX_BLOCK_EVIDENCE`` stored pieces that block ``height`` may carry, oldest
        offence first, one per (validator, offence height)."""
        chosen: dict[tuple[str, int], bytes] = {}
        for _, _, payload in reversed(self._store.evidence(limit=CANDIDATES)):
            try:
                ev = decode_evidence(payload)
            except DecodeError:
                continue
            key = (ev.validator, ev.height)
            if key in chosen or self.piece_problem(ev, height) is not None:
                continue
            chosen[key] = encode(ev)
            if len(chosen) >= MAX_BLOCK_EVIDENCE:
                break
        return [chosen[k] for k in sorted(chosen, key=lambda k: (k[1], k[0]))]

    def problem(self, block: Block) -> str | None:
        """valid(v)'s evidence rule for ``block`` (see the module docstring), or None."""
        seen: set[tuple[str, int]] = set()
        for i, raw in enumerate(block.evidence):
            try:
                ev = decode_evidence(raw)
            except DecodeError as exc:
                return f"evidence {i} is malformed: {exc}"
            key = (ev.validator, ev.height)
            if key in seen:
                return f"evidence {i} repeats the offence of {ev.validator[:16]} at height {ev.height}"
            seen.add(key)
            problem = self.piece_problem(ev, block.header.height)
            if problem is not None:
                return f"evidence {i}: {problem}"
        return None
