"""Unit tests of the peer filter (agent_world_node/network/peer_filter.py): misbehaviour scores
with decay, bans that expire, the operator's block list, and the per-origin gossip rate limit."""

from __future__ import annotations

import pytest

from agent_world_node.network.peer_filter import PENALTY_POINTS, PeerFilter, RateLimiter
from agent_world_node.types import Offence


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_repeated_offences_ban_and_the_ban_expires():
    clock = Clock()
    f = PeerFilter(ban_threshold=100, ban_seconds=60, decay_per_s=2, clock=clock)
    per = PENALTY_POINTS["bad_signature"]
    needed = int(100 // per) + (100 % per > 0)
    for _ in range(needed - 1):
        assert f.penalize("P", "bad_signature") is False
    assert not f.refuses("P")
    assert f.penalize("P", "bad_signature") is True
    assert f.refuses("P") and f.is_banned("P") and f.bans_total == 1
    assert f.banned() == {"P": 60.0}
    assert f.penalize("P", "bad_signature") is False  # already banned: no second ban
    clock.t += 59.9
    assert f.refuses("P")
    clock.t += 0.2
    assert not f.refuses("P") and f.banned() == {}
    assert f.score("P") == 0.0  # a new start after the ban


def test_scores_decay_so_rare_accidents_never_ban():
    clock = Clock()
    f = PeerFilter(ban_threshold=100, ban_seconds=60, decay_per_s=2, clock=clock)
    for _ in range(50):  # one malformed message every 5 s for over 4 minutes
        assert f.penalize("Q", "malformed") is False
        clock.t += 5
    assert f.score("Q") == 0.0
    f.penalize("Q", "malformed")
    assert f.score("Q") == PENALTY_POINTS["malformed"]
    clock.t += 2
    assert f.score("Q") == PENALTY_POINTS["malformed"] - 4


def test_counted_offences_and_unknown_reasons():
    f = PeerFilter(ban_threshold=100, clock=Clock())
    assert f.penalize("R", Offence.RATE_LIMITED, count=99) is False
    assert f.penalize("R", Offence.RATE_LIMITED) is True
    assert f.penalize("S", Offence.MALFORMED, count=9) is False
    assert f.score("S") == 90.0
    with pytest.raises(KeyError):  # offences are typed: an unknown one is a bug, not 10 points
        f.penalize("S", "some_new_reason")  # type: ignore[arg-type]
    assert set(PENALTY_POINTS) == set(Offence)


def test_operator_block_list_is_separate_and_replaced_whole():
    f = PeerFilter(clock=Clock())
    f.set_blocked(["A", "B"])
    assert f.refuses("A") and f.refuses("B") and not f.refuses("C")
    assert not f.is_banned("A")
    f.set_blocked([])
    assert not f.refuses("A") and f.blocked == frozenset()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        PeerFilter(ban_threshold=0)
    with pytest.raises(ValueError):
        RateLimiter(rate=0, burst=10)


def test_rate_limiter_allows_bursts_then_the_rate():
    clock = Clock()
    r = RateLimiter(rate=10, burst=5, clock=clock)
    assert [r.allow("P") for _ in range(7)] == [True] * 5 + [False] * 2
    assert r.allow("other")  # per origin
    clock.t += 0.15  # one token back (1.5 tokens)
    assert r.allow("P") and not r.allow("P")
    clock.t += 10  # refills to the burst, not beyond
    assert sum(r.allow("P") for _ in range(20)) == 5
