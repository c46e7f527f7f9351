"""Finding events in the journal: filters, cursor paging in either direction, and the audit export
(``audit_events`` and ``save_audit_log`` of the original runtime interface).

A filter selects events by kind (patterns as module subscriptions write them: an exact kind, a
prefix ending in ``*`` such as ``domain.*``, or, as before, a bare prefix such as ``staking.``), by
agent (the event's ``agent_id`` or an agent it names as ``created_agent_id`` or ``to``), by height
range and by action id. A page scans at most ``MAX_SCAN`` events: a filter that matches rarely
returns fewer than asked (even none) with a cursor to continue from, so no read costs more than
that whatever the journal's size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from .codec import decode, to_builtins
from .events import Event, EventJournal

#: Most journal events one page looks at.
MAX_SCAN = 100_000
#: Event fields that name an agent an event is about.
AGENT_FIELDS = ("agent_id", "created_agent_id", "to")


class EventFilter(msgspec.Struct, frozen=True):
    """Which events to select (every field optional; all given must hold): ``kinds`` (any of
    these patterns), ``agent``, ``from_height``/``to_height`` (inclusive), ``action_id`` (hex)."""

    kinds: tuple[str, ...] = ()
    agent: str | None = None
    from_height: int | None = None
    to_height: int | None = None
    action_id: str | None = None

    def kind_selected(self, kind: str) -> bool:
        """True when ``kind`` matches one of ``kinds`` (or there are none)."""
        return not self.kinds or any(kind.startswith(p[:-1] if p.endswith("*") else p) for p in self.kinds)

    def selects(self, event: Event) -> bool:
        """True when ``event`` passes every condition."""
        if self.from_height is not None and event.height < self.from_height:
            return False
        if self.to_height is not None and event.height > self.to_height:
            return False
        if not self.kind_selected(event.kind):
            return False
        data = event.data
        if self.agent is not None and not any(data.get(f) == self.agent for f in AGENT_FIELDS):
            return False
        if self.action_id is not None:
            got = data.get("action_id")
            if not isinstance(got, bytes) or got.hex() != self.action_id.lower():
                return False
        return True


class EventPage(msgspec.Struct, frozen=True):
    """One page: the ``events`` found, and ``next_cursor``, the seq to continue from in the same
    direction (None when the journal is exhausted)."""

    events: list[Event]
    next_cursor: int | None


def _first_index_at_height(journal: EventJournal, height: int) -> int:
    """Index (into the held events) of the first event of height >= ``height``."""
    events = journal.raw()
    lo, hi = 0, len(events)
    while lo < hi:
        mid = (lo + hi) // 2
        if decode(events[mid], Event).height < height:
            lo = mid + 1
        else:
            hi = mid
    return lo


def audit_events(journal: EventJournal, flt: EventFilter, *, limit: int = 100, cursor: int | None = None,
                 newest_first: bool = False) -> EventPage:
    """Return up to ``limit`` events that ``flt`` selects, oldest first from seq ``cursor``
    (default: the oldest held), or newest first from seq ``cursor`` down (default: the newest),
    looking at no more than ``MAX_SCAN`` events. Raises ValueError for a limit below 1."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    raws = journal.raw()
    base = journal.base  # event seq s is at index s - base - 1
    kinds = journal.kinds()
    if newest_first:
        start = len(raws) - 1 if cursor is None else min(cursor - base - 1, len(raws) - 1)
        if flt.to_height is not None:
            start = min(start, _first_index_at_height(journal, flt.to_height + 1) - 1)
        indexes: Iterator[int] = iter(range(start, -1, -1))
    else:
        start = 0 if cursor is None else max(cursor - base - 1, 0)
        if flt.from_height is not None:
            start = max(start, _first_index_at_height(journal, flt.from_height))
        indexes = iter(range(start, len(raws)))
    found: list[Event] = []
    scanned = 0
    for i in indexes:
        if len(found) >= limit or scanned >= MAX_SCAN:
            return EventPage(found, i + base + 1)
        scanned += 1
        if not flt.kind_selected(kinds[i]):  # no decode for the kinds not asked for
            continue
        event = decode(raws[i], Event)
        if newest_first and flt.from_height is not None and event.height < flt.from_height:
            return EventPage(found, None)
        if not newest_first and flt.to_height is not None and event.height > flt.to_height:
            return EventPage(found, None)
        if flt.selects(event):
            found.append(event)
    return EventPage(found, None)


def save_audit_log(journal: EventJournal, path: Path, flt: EventFilter) -> int:
    """Write every held event that ``flt`` selects to ``path`` as JSON Lines (one
    ``{"seq", "height", "kind", "data"}`` object per line, bytes as hex), oldest first, replacing
    the file; return how many. Raises OSError."""
    count = 0
    cursor: int | None = None
    with open(path, "w", encoding="utf-8") as out:
        while True:
            page = audit_events(journal, flt, limit=1000, cursor=cursor)
            for event in page.events:
                out.write(json.dumps(event_json(event), sort_keys=True) + "\n")
                count += 1
            if page.next_cursor is None:
                return count
            cursor = page.next_cursor


def event_json(event: Event) -> dict[str, Any]:
    """``event`` as a JSON-ready dict, bytes as lowercase hex."""
    out: dict[str, Any] = to_builtins(event)
    return out
