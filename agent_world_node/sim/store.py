"""The simulated disk: an in-memory ``NodeStore`` that can lose the writes of an interrupted step.

A simulated node keeps one ``SimStore`` for its whole life; a crash discards the ``Replica`` (its
memory) and a restart reopens a new one on the same store (its disk). What a crash may lose is modelled here (see ``lose_unsynced``):

- The real store commits every write as its own SQLite transaction with ``synchronous=FULL``, so a
  write that returned is durable. The only writes a crash can lose are those of the step that was
  running when the process died, and only a *suffix* of them (writes happen in program order).
- Outputs of that step (messages, timers) are never performed: the process died before sending.
  So "WAL written, message not sent" (suffix of length 0) and "block stored, execution record
  lost" (suffix of length 1 after ``put_block``) are both covered.
- A world snapshot written by the driver is a barrier: ``save_to_dir`` is atomic and the files stay,
  so the writes before it are not lost either (``mark_barrier``).

``wal_history`` keeps every WAL entry that was ever durably written (minus those lost in a crash),
for the "no honest double-sign across restarts" property: the table itself is pruned after commits.
"""

from __future__ import annotations

from typing import Callable

from ..store import ExecutionRecord, NodeStore
from ..types import Block, CommitCertificate

Undo = Callable[[], None]


class SimStore(NodeStore):
    """A ``NodeStore(":memory:")`` with an undo log of the writes of the current step.

    ``begin_step()`` starts a step; every write then pushes a ``(description, undo)`` pair;
    ``lose_unsynced(k)`` undoes the last ``k`` writes of the step (stopping at a barrier) and returns
    their descriptions.
    """

    def __init__(self) -> None:
        super().__init__(":memory:")
        self._undo: list[tuple[str, Undo | None]] = []
        self.wal_history: list[tuple[int, int, str, bytes]] = []
        self.writes = 0

    # -- step bookkeeping -------------------------------------------------------------------------
    def begin_step(self) -> None:
        """Forget the undo log: the writes of earlier steps are durable."""
        self._undo.clear()

    def step_writes(self) -> int:
        """How many writes the current step made (barriers included)."""
        return len(self._undo)

    def mark_barrier(self, what: str) -> None:
        """Record a write outside the database (a world snapshot) that a crash cannot undo."""
        self._undo.append((what, None))

    def lose_unsynced(self, count: int) -> list[str]:
        """Undo the last ``count`` writes of the current step, newest first, stopping at a barrier.
        Returns the descriptions of the writes undone."""
        lost: list[str] = []
        while self._undo and len(lost) < count:
            what, undo = self._undo[-1]
            if undo is None:
                break
            self._undo.pop()
            undo()
            lost.append(what)
        return lost

    def _push(self, what: str, undo: Undo) -> None:
        self.writes += 1
        self._undo.append((what, undo))

    def _exec(self, sql: str, args: tuple = ()) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(sql, args)

    # -- writes, each with its undo ---------------------------------------------------------------
    def put_block(self, block: Block, certificate: CommitCertificate) -> None:
        """``NodeStore.put_block``, undoable when it inserted a row."""
        h = block.header.height
        existed = self.block_hash(h) is not None
        super().put_block(block, certificate)
        if not existed:
            self._push(f"block {h}", lambda: (self._exec("DELETE FROM blocks WHERE height=?", (h,)),
                                              self._exec("DELETE FROM action_heights WHERE height=?", (h,))))

    def put_execution(self, record: ExecutionRecord) -> None:
        """``NodeStore.put_execution``, undoable when it inserted a row."""
        existed = self.get_execution(record.height) is not None
        super().put_execution(record)
        if not existed:
            h = record.height
            self._push(f"execution {h}", lambda: self._exec("DELETE FROM executions WHERE height=?", (h,)))

    def wal_append(self, height: int, round: int, kind: str, payload: bytes) -> None:
        """``NodeStore.wal_append``; also kept in ``wal_history``."""
        super().wal_append(height, round, kind, payload)
        seq = int(self._db.execute("SELECT MAX(seq) FROM wal").fetchone()[0])
        entry = (height, round, kind, payload)
        self.wal_history.append(entry)

        def undo() -> None:
            self._exec("DELETE FROM wal WHERE seq=?", (seq,))
            self.wal_history.remove(entry)

        self._push(f"wal {kind} {height}/{round}", undo)

    def wal_prune(self, below_height: int) -> None:
        """``NodeStore.wal_prune``; the undo puts the pruned rows back."""
        rows = self._db.execute(
            "SELECT seq, height, round, kind, payload FROM wal WHERE height < ?", (below_height,)
        ).fetchall()
        super().wal_prune(below_height)
        if rows:

            def undo() -> None:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.executemany("INSERT INTO wal(seq, height, round, kind, payload) VALUES (?,?,?,?,?)", rows)

            self._push(f"wal prune <{below_height}", undo)

    def put_evidence(self, height: int, kind: str, payload: bytes) -> None:
        """``NodeStore.put_evidence``, undoable."""
        super().put_evidence(height, kind, payload)
        seq = int(self._db.execute("SELECT MAX(seq) FROM evidence").fetchone()[0])
        self._push(f"evidence {height}", lambda: self._exec("DELETE FROM evidence WHERE seq=?", (seq,)))

    def set_meta(self, key: str, value: bytes) -> None:
        """``NodeStore.set_meta``, undoable (restores the old value)."""
        old = self.get_meta(key)
        super().set_meta(key, value)
        if old is None:
            self._push(f"meta {key}", lambda: self._exec("DELETE FROM meta WHERE key=?", (key,)))
        else:
            self._push(f"meta {key}", lambda: self._exec("INSERT OR REPLACE INTO meta(key, value) VALUES (?,?)", (key, old)))
