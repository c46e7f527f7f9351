"""Named crash points for crash-safety tests (fail points, as in FoundationDB and TiKV's ``fail-rs``).

Code that persists state calls ``failpoint("name")`` at the moments where a crash is most
dangerous (between two writes whose order matters). In production the call does nothing: the set
of armed fail points is read once, at import, from the environment variable
``AGENT_WORLD_FAILPOINTS`` and is empty unless the variable is set, so a disarmed call costs one
dict lookup.

``AGENT_WORLD_FAILPOINTS`` is a comma-separated list of ``name`` or ``name@N`` (N >= 1): the
process kills itself with SIGKILL on the N-th time execution reaches that fail point (the 1st
when ``@N`` is omitted), exactly as ``kill -9`` would: no ``finally`` blocks, no atexit handlers,
no buffered output flushed. Just before, one line ``FAILPOINT <name> hit <N>: killing pid <pid>
with SIGKILL`` is written (and flushed) to stderr, so a test can tell from the node's log which
fail point fired. Example::

    AGENT_WORLD_FAILPOINTS="snapshot.after_rename@3,commit.after_put_block" awnode start --home ...

The names (``KNOWN_FAILPOINTS``) and where they sit:

- ``snapshot.after_journal``: ``persistence.save_state``, a new journal segment is written but no
  module file and no snapshot yet (the middle of writing the journal and module files).
- ``snapshot.before_rename``: the new snapshot is complete in its temporary directory, not yet
  renamed into place.
- ``snapshot.after_rename``: the new snapshot directory is in place, ``CURRENT`` still names the
  old one.
- ``snapshot.after_current``: ``CURRENT`` names the new snapshot; old files are not yet removed.
- ``execution.after_put_execution``: ``NodeRuntimeExecutionDriver._execute``, the execution record
  of a height is stored, the world snapshot of that height is not yet written.
- ``commit.after_put_block``: ``Replica._commit``, the committed block is stored, not yet executed.
- ``commit.after_execute``: ``Replica._commit``, the block is executed (and its record stored),
  the consensus WAL below its height not yet pruned.
- ``wal.after_append``: ``NodeStore.wal_append``, a signed proposal or vote is durable in the
  consensus WAL but not yet sent to any peer.
- ``state_snapshot.after_blob``: ``SnapshotArchive.save_snapshot_to_dir``, a state-sync snapshot's
  blob is written, its manifest (the commit point) not yet.
- ``state_snapshot.serving_chunk``: ``SnapshotArchive.read_chunk``, a chunk is being read for a
  joining peer.
- ``statesync.after_world``: ``statesync.install``, the restored world is saved, the base block and
  its execution record not yet stored.
- ``statesync.after_block``: ``statesync.install``, the base block is stored, its execution record
  (the commit point) not yet.

An unknown name or a malformed entry in the variable raises ``FailpointSpecError`` at import, so a
typo cannot silently test nothing.
"""

from __future__ import annotations

import os
import signal
import sys

ENV_VAR = "AGENT_WORLD_FAILPOINTS"

KNOWN_FAILPOINTS: frozenset[str] = frozenset(
    {
        "snapshot.after_journal",
        "snapshot.before_rename",
        "snapshot.after_rename",
        "snapshot.after_current",
        "execution.after_put_execution",
        "commit.after_put_block",
        "commit.after_execute",
        "wal.after_append",
        "state_snapshot.after_blob",
        "state_snapshot.serving_chunk",
        "statesync.after_world",
        "statesync.after_block",
    }
)


class FailpointSpecError(ValueError):
    """``AGENT_WORLD_FAILPOINTS`` (or a spec passed to ``parse_failpoints``) is malformed; the message
    names the bad entry and lists the known fail points."""


def parse_failpoints(spec: str, known: frozenset[str] = KNOWN_FAILPOINTS) -> dict[str, int]:
    """Parse a fail point spec ``"name[@N],name[@N],..."`` into ``{name: N}``.

    ``N`` is the 1-based hit on which the process crashes (1 when omitted). Whitespace around
    entries is ignored and empty entries (``"a,,b"``, a trailing comma, ``""``) are skipped.

    Raises FailpointSpecError for a name not in ``known``, an ``N`` that is not an integer >= 1,
    or a name listed twice.
    """
    armed: dict[str, int] = {}
    for raw in spec.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, count_text = entry.partition("@")
        name = name.strip()
        if name not in known:
            raise FailpointSpecError(
                f"{ENV_VAR}: unknown fail point {name!r} in {entry!r}; known: {', '.join(sorted(known))}"
            )
        count = 1
        if sep:
            try:
                count = int(count_text.strip())
            except ValueError:
                count = 0
            if count < 1:
                raise FailpointSpecError(
                    f"{ENV_VAR}: {entry!r} needs a hit count N >= 1 after '@' (as in {name}@3)"
                )
        if name in armed:
            raise FailpointSpecError(f"{ENV_VAR}: fail point {name!r} is listed twice; list it once")
        armed[name] = count
    return armed


class FailpointCounter:
    """Counts hits of armed fail points and says when one must fire (the crash-free half of
    ``failpoint``, testable in-process).

    ``armed`` maps name to the 1-based hit that fires (as returned by ``parse_failpoints``).
    """

    def __init__(self, armed: dict[str, int]) -> None:
        self.armed = dict(armed)
        self.hits: dict[str, int] = {}

    def hit(self, name: str) -> int | None:
        """Record one hit of ``name``; return the hit number if this hit must crash, else None.
        Names that are not armed are not counted."""
        target = self.armed.get(name)
        if target is None:
            return None
        n = self.hits.get(name, 0) + 1
        self.hits[name] = n
        return n if n == target else None


def _crash(name: str, n: int) -> None:
    """Write the fail point line to stderr, then SIGKILL this process (never returns)."""
    try:
        sys.stderr.write(f"FAILPOINT {name} hit {n}: killing pid {os.getpid()} with SIGKILL\n")
        sys.stderr.flush()
    finally:
        os.kill(os.getpid(), signal.SIGKILL)


_ARMED: dict[str, int] = parse_failpoints(os.environ.get(ENV_VAR, ""))
_COUNTER = FailpointCounter(_ARMED)


def failpoint(name: str) -> None:
    """Crash the process here as ``kill -9`` would if ``name`` is armed in ``AGENT_WORLD_FAILPOINTS``
    and this is its N-th hit (see the module docstring); otherwise do nothing (one dict lookup)."""
    if name in _ARMED:
        n = _COUNTER.hit(name)
        if n is not None:
            _crash(name, n)


def armed() -> dict[str, int]:
    """Return a copy of the fail points armed in this process (``{name: N}``; empty when off)."""
    return dict(_ARMED)
