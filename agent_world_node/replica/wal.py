"""The consensus write-ahead log's entries: what a validator signed, written before it is sent.

A restarted validator reads its WAL entries of the height it was in and hands them to
``ConsensusCore.resume``, which re-sends them instead of signing anything conflicting.
"""

from __future__ import annotations

from agent_world_runtime.codec import DecodeError, decode, encode

from ..store import WalEntryKind
from ..types import Proposal, Vote, VoteType


class WALError(RuntimeError):
    """The consensus WAL cannot be replayed safely; the message says why and what to do."""


def wal_entry(message: Proposal | Vote) -> tuple[WalEntryKind, bytes]:
    """Return the WAL kind and encoding of a message this validator signed."""
    if isinstance(message, Proposal):
        kind = WalEntryKind.PROPOSAL
    else:
        kind = WalEntryKind.PREVOTE if message.vote_type == VoteType.PREVOTE else WalEntryKind.PRECOMMIT
    return kind, encode(message)


def decode_wal_entries(height: int, entries: list[tuple[int, WalEntryKind, bytes]]) -> list[Proposal | Vote]:
    """Decode the WAL entries ``(round, kind, payload)`` of ``height``. Raises ``WALError`` for an
    entry that does not decode as its kind."""
    out: list[Proposal | Vote] = []
    for round_, kind, payload in entries:
        try:
            message: Proposal | Vote = (
                decode(payload, Proposal) if kind == WalEntryKind.PROPOSAL else decode(payload, Vote)
            )
        except DecodeError as exc:
            raise WALError(
                f"the consensus WAL entry ({kind}, height {height}, round {round_}) does not decode: {exc}; "
                "this home's WAL is corrupt"
            ) from None
        out.append(message)
    return out
