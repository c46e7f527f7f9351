"""Crash-safe node storage in SQLite: block store, execution records, consensus WAL, evidence.

One database file per node (``HOME/data/node.sqlite3``) in WAL journal mode with ``synchronous=FULL``:
a transaction that returned is on disk, and ``kill -9`` at any moment leaves the last committed
transaction intact. Tables:

- ``blocks(height, block_hash, payload)``: the committed block and its commit certificate, encoded as
  ``ReplicatedCommitPayload`` without execution hashes (those live in ``executions``).
- ``executions(height, execution_block_hash, execution_state_root, events_root, action_count)``: the
  execution record of each executed height.
- ``wal(seq, height, round, kind, payload)``: every consensus message this validator signed, written
  before it is sent (``kind``: a ``WalEntryKind``).
- ``evidence(seq, height, kind, payload)``: equivocation evidence seen.
- ``action_heights(action_id, height)``: the height of every stored block's actions (outcome lookups).
- ``meta(key, value)``: small values such as the height of the last world snapshot.
"""

from __future__ import annotations

import contextlib
import enum
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import msgspec

from agent_world_runtime.codec import decode, encode
from agent_world_runtime.failpoints import failpoint

from .types import Block, CommitCertificate, ExecutionHashes, ReplicatedCommitPayload


class StoreError(RuntimeError):
    """The store's contents are inconsistent with what the caller asked (e.g. a second, different
    block at a stored height); the message says which height and what differs."""


class WalEntryKind(enum.StrEnum):
    """What a consensus WAL entry holds (stored as its value)."""

    PROPOSAL = "proposal"
    PREVOTE = "prevote"
    PRECOMMIT = "precommit"


class ExecutionRecord(msgspec.Struct, frozen=True):
    """The stored execution result of one height (``NodeExecutionCommitResult`` plus the events root)."""

    height: int
    execution_block_hash: bytes
    execution_state_root: bytes
    events_root: bytes
    action_count: int

    def hashes(self) -> ExecutionHashes:
        """Return the wire form carried by commits and replicated payloads."""
        return ExecutionHashes(self.height, self.execution_block_hash, self.execution_state_root)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    block_hash BLOB NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS executions (
    height INTEGER PRIMARY KEY,
    execution_block_hash BLOB NOT NULL,
    execution_state_root BLOB NOT NULL,
    events_root BLOB NOT NULL,
    action_count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS wal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    height INTEGER NOT NULL,
    round INTEGER NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS wal_height ON wal(height);
CREATE TABLE IF NOT EXISTS evidence (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    height INTEGER NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS action_heights (
    action_id BLOB PRIMARY KEY,
    height INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS action_heights_by_height ON action_heights(height);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"""


class NodeStore:
    """The node's SQLite database. Not thread-safe: use it from the node's trio thread only."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    @contextlib.contextmanager
    def relaxed_durability(self) -> Iterator[None]:
        """Within this block, commits do not wait for the disk (``synchronous=NORMAL``: in WAL mode
        still safe against a killed process, not against a power loss). For writes that can be
        fetched again from peers, i.e. blocks and execution records of a sync batch; never for
        the consensus WAL of a validator's own votes. Restores ``synchronous=FULL`` on exit."""
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            self._db.execute("PRAGMA synchronous=FULL")

    # -- blocks ---------------------------------------------------------------------------------
    def put_block(self, block: Block, certificate: CommitCertificate) -> None:
        """Store the committed ``block`` with its ``certificate``. Storing the same block again is a
        no-op; a different block at a stored height raises StoreError (that would be a fork)."""
        h = block.header.height
        bh = block.hash()
        row = self._db.execute("SELECT block_hash FROM blocks WHERE height=?", (h,)).fetchone()
        if row is not None:
            if bytes(row[0]) != bh:
                raise StoreError(
                    f"height {h}: already committed block {bytes(row[0]).hex()}, refusing {bh.hex()}"
                )
            return
        payload = encode(ReplicatedCommitPayload(block=block, certificate=certificate))
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT INTO blocks(height, block_hash, payload) VALUES (?,?,?)", (h, bh, payload))
            self._db.executemany("INSERT OR IGNORE INTO action_heights(action_id, height) VALUES (?,?)",
                                 [(a.action_id, h) for a in block.actions])

    def get_block(self, height: int) -> ReplicatedCommitPayload | None:
        """Return the stored block and certificate at ``height`` (execution hashes filled in when
        this node has executed it), or None."""
        row = self._db.execute("SELECT payload FROM blocks WHERE height=?", (height,)).fetchone()
        if row is None:
            return None
        stored = decode(bytes(row[0]), ReplicatedCommitPayload)
        record = self.get_execution(height)
        if record is None:
            return stored
        return ReplicatedCommitPayload(stored.block, stored.certificate, record.hashes())

    def block_hash(self, height: int) -> bytes | None:
        """Return the stored block hash at ``height`` or None."""
        row = self._db.execute("SELECT block_hash FROM blocks WHERE height=?", (height,)).fetchone()
        return bytes(row[0]) if row else None

    def first_block_height(self) -> int:
        """Return the lowest stored block height (0 when none): above 1 once blocks were pruned."""
        row = self._db.execute("SELECT MIN(height) FROM blocks").fetchone()
        return int(row[0] or 0)

    def prune_below(self, height: int) -> tuple[int, int]:
        """Delete the blocks and execution records of heights below ``height`` in one transaction;
        return how many of each were deleted. SQLite reuses the freed pages, so the file stops
        growing once pruning keeps pace (it does not shrink)."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            blocks = self._db.execute("DELETE FROM blocks WHERE height < ?", (height,)).rowcount
            self._db.execute("DELETE FROM action_heights WHERE height < ?", (height,))
            executions = self._db.execute("DELETE FROM executions WHERE height < ?", (height,)).rowcount
        return blocks, executions

    def action_height(self, action_id: bytes) -> int | None:
        """Return the height of the stored block that holds action ``action_id``, or None (never
        committed, committed in a pruned height, or before a state-sync base)."""
        row = self._db.execute("SELECT height FROM action_heights WHERE action_id=?", (action_id,)).fetchone()
        return int(row[0]) if row else None

    def last_block_height(self) -> int:
        """Return the highest stored block height (0 when none)."""
        row = self._db.execute("SELECT MAX(height) FROM blocks").fetchone()
        return int(row[0] or 0)

    # -- executions -----------------------------------------------------------------------------
    def put_execution(self, record: ExecutionRecord) -> None:
        """Store the execution record of a height; re-storing an identical record is a no-op and a
        different one raises StoreError (execution must be deterministic)."""
        existing = self.get_execution(record.height)
        if existing is not None:
            if existing != record:
                raise StoreError(
                    f"height {record.height}: stored execution state root "
                    f"{existing.execution_state_root.hex()} differs from {record.execution_state_root.hex()}"
                )
            return
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO executions VALUES (?,?,?,?,?)",
                (
                    record.height,
                    record.execution_block_hash,
                    record.execution_state_root,
                    record.events_root,
                    record.action_count,
                ),
            )

    def get_execution(self, height: int) -> ExecutionRecord | None:
        """Return the execution record of ``height`` or None."""
        row = self._db.execute(
            "SELECT height, execution_block_hash, execution_state_root, events_root, action_count "
            "FROM executions WHERE height=?",
            (height,),
        ).fetchone()
        if row is None:
            return None
        return ExecutionRecord(int(row[0]), bytes(row[1]), bytes(row[2]), bytes(row[3]), int(row[4]))

    def last_execution(self) -> ExecutionRecord | None:
        """Return the execution record of the highest executed height, or None before the first."""
        row = self._db.execute("SELECT MAX(height) FROM executions").fetchone()
        return self.get_execution(int(row[0])) if row and row[0] is not None else None

    # -- consensus WAL and evidence -------------------------------------------------------------
    def wal_append(self, height: int, round: int, kind: WalEntryKind, payload: bytes) -> None:
        """Durably record a message this validator signed, before it is sent."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO wal(height, round, kind, payload) VALUES (?,?,?,?)", (height, round, kind, payload)
            )
        failpoint("wal.after_append")  # durable, not yet sent: a restart must re-send it, not sign anew

    def wal_entries(self, height: int) -> list[tuple[int, WalEntryKind, bytes]]:
        """Return ``(round, kind, payload)`` of every WAL entry at ``height`` in write order.
        Raises ValueError for a kind that is not a ``WalEntryKind`` (a corrupt or foreign WAL)."""
        rows = self._db.execute(
            "SELECT round, kind, payload FROM wal WHERE height=? ORDER BY seq", (height,)
        ).fetchall()
        return [(int(r), WalEntryKind(k), bytes(p)) for r, k, p in rows]

    def wal_prune(self, below_height: int) -> None:
        """Drop WAL entries of heights below ``below_height`` (they are decided and stored)."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM wal WHERE height < ?", (below_height,))

    def put_evidence(self, height: int, kind: str, payload: bytes) -> None:
        """Record equivocation evidence (both signed messages, encoded by the caller)."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT INTO evidence(height, kind, payload) VALUES (?,?,?)", (height, kind, payload))

    def evidence(self, limit: int = 100) -> list[tuple[int, str, bytes]]:
        """Return the latest ``limit`` evidence entries as ``(height, kind, payload)``."""
        rows = self._db.execute(
            "SELECT height, kind, payload FROM evidence ORDER BY seq DESC LIMIT ?", (limit,)
        ).fetchall()
        return [(int(h), str(k), bytes(p)) for h, k, p in rows]

    # -- meta -----------------------------------------------------------------------------------
    def set_meta(self, key: str, value: bytes) -> None:
        """Set a small metadata value."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?,?)", (key, value))

    def get_meta(self, key: str) -> bytes | None:
        """Return a metadata value or None."""
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return bytes(row[0]) if row else None
