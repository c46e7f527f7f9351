"""ConsensusCore.resume: a validator restarted from its WAL resumes the height and round it was in,
re-sends what it signed there, never signs anything conflicting, and still decides with the others.

Same setting as tests/test_consensus_core.py: four validators of stake 1, ME is KEYS[0].
"""

from __future__ import annotations

from collections import deque
from typing import Callable

import msgspec
import pytest

from agent_world_node.consensus import (
    Broadcast,
    ConsensusCore,
    Decide,
    GetValue,
    PersistWAL,
    ProposalReceived,
    ScheduleTimeout,
    Step,
    TimeoutFired,
    Validator,
    ValidatorSet,
    ValueToPropose,
    VoteReceived,
    proposer_for,
)
from agent_world_node.types import PROPOSAL_SIGN_DOMAIN, Block, Proposal, Vote

from .test_consensus_core import (
    CHAIN,
    KEYS,
    ME,
    PRECOMMIT,
    PREVOTE,
    VSET,
    feed_votes,
    go_to_round,
    height_where,
    make_block,
    new_core,
    proposal,
    proposer_key,
    sent_proposals,
    sent_votes,
    vote,
)

ME_ID = ME.public_key.hex()


def persisted(effects) -> list[Proposal | Vote]:
    return [e.entry for e in effects if isinstance(e, PersistWAL)]


def broadcasts(effects) -> list[Proposal | Vote]:
    return [e.message for e in effects if isinstance(e, Broadcast)]


def step_key(message: Proposal | Vote) -> tuple:
    if isinstance(message, Proposal):
        return (message.height, message.round, "proposal")
    return (message.height, message.round, int(message.vote_type))


def assert_no_conflicts(messages: list[Proposal | Vote]) -> None:
    """At most one distinct signed message per (height, round, step)."""
    by_step: dict[tuple, Proposal | Vote] = {}
    for m in messages:
        first = by_step.setdefault(step_key(m), m)
        assert first == m, f"conflicting signatures for {step_key(m)}: {first} and {m}"


def crashed_in_round_2(h: int) -> tuple[list, Block]:
    """Run ME at height ``h`` (where ME proposes none of rounds 0-2) until it has prevoted and
    precommitted block v in round 2; return its WAL entries and v."""
    core = new_core()
    wal = persisted(core.start_height(h))
    for r in range(2):
        wal += persisted(core.handle(TimeoutFired("propose", h, r)))
        wal += persisted(core.handle(TimeoutFired("prevote", h, r)))
        wal += persisted(core.handle(TimeoutFired("precommit", h, r)))
    v = make_block(h, proposer_key(h, 2), b"v")
    wal += persisted(core.handle(ProposalReceived(proposal(proposer_key(h, 2), h, 2, v))))
    wal += persisted(feed_votes(core, KEYS[1:3], PREVOTE, h, 2, v.hash()))
    assert (core.round, core.step, core.locked_round) == (2, Step.PRECOMMIT, 2)
    assert [(m.round, m.vote_type, m.block_hash) for m in wal] == [
        (0, PREVOTE, None), (0, PRECOMMIT, None), (1, PREVOTE, None), (1, PRECOMMIT, None),
        (2, PREVOTE, v.hash()), (2, PRECOMMIT, v.hash()),
    ]
    return wal, v


# -- resuming the round -----------------------------------------------------------------------------


def test_resume_returns_to_round_and_step_and_resends_the_same_votes():
    h = height_where(set())
    wal, v = crashed_in_round_2(h)
    core = new_core()
    effects = core.resume(h, list(reversed(wal)))  # WAL order does not matter
    assert (core.height, core.round, core.step) == (h, 2, Step.PRECOMMIT)
    assert (core.locked_round, core.locked_hash) == (2, v.hash())
    assert persisted(effects) == []  # nothing newly signed
    assert broadcasts(effects) == wal[4:]  # exactly our round-2 prevote and precommit, as signed
    assert [e for e in effects if isinstance(e, (GetValue, Decide))] == []
    # The WAL messages count as received: they are in the height's message log for re-gossip.
    assert sorted(core.height_messages(), key=repr) == sorted(wal, key=repr)


def test_resumed_core_signs_nothing_in_earlier_rounds_nor_a_second_vote_in_its_round():
    h = height_where(set())
    wal, v = crashed_in_round_2(h)
    w = make_block(h, proposer_key(h, 2), b"w")
    core = new_core()
    core.resume(h, wal)
    effects = []
    for r in range(3):  # stale or already-passed steps
        effects += core.handle(TimeoutFired("propose", h, r))
        effects += core.handle(TimeoutFired("prevote", h, r))
    effects += feed_votes(core, KEYS[1:4], PREVOTE, h, 0, w.hash())  # a polka of round 0: too late
    effects += core.handle(ProposalReceived(proposal(proposer_key(h, 2), h, 2, w)))  # a different proposal
    assert persisted(effects) == []
    assert [m for m in broadcasts(effects) if m.validator == ME_ID] == []
    assert (core.round, core.step) == (2, Step.PRECOMMIT)


def test_resumed_core_decides_with_the_others_in_its_round():
    h = height_where(set())
    wal, v = crashed_in_round_2(h)
    core = new_core()
    core.resume(h, wal)
    effects = core.handle(ProposalReceived(proposal(proposer_key(h, 2), h, 2, v)))
    assert (core.valid_round, core.valid_value) == (2, v)  # restored once the block is known
    effects += feed_votes(core, KEYS[1:3], PRECOMMIT, h, 2, v.hash())
    [decide] = [e for e in effects if isinstance(e, Decide)]
    assert decide.block == v and decide.certificate.round == 2
    assert ME_ID in {s.validator for s in decide.certificate.signatures}  # our pre-crash precommit
    assert persisted(effects) == []


def test_resumed_core_keeps_its_lock_in_the_next_round():
    h = height_where({3}, rounds=4)  # ME proposes round 3, none of rounds 0-2
    wal, v = crashed_in_round_2(h)
    w = make_block(h, ME, b"w", round=3)
    core = new_core()
    core.resume(h, wal)
    feed_votes(core, KEYS[1:3], PRECOMMIT, h, 2, None)  # 2f+1 precommits in round 2, no decision
    effects = core.handle(TimeoutFired("precommit", h, 2))
    assert core.round == 3 and GetValue(h, 3) in effects  # v itself is not known: ask for a value
    effects = core.handle(ValueToPropose(h, 3, w))
    [p] = sent_proposals(effects)
    assert (p.block, p.pol_round) == (w, -1)
    [pv] = sent_votes(effects)
    assert (pv.round, pv.block_hash) == (3, None)  # locked on v since round 2: L26 prevote nil, even for its own w

    # Once v is known (the round-2 proposal, and the polka it had seen), it is the valid value
    # again and ME re-proposes it in round 3 with its proof of lock, and prevotes it (L15-L16, L28-L30).
    core = new_core()
    core.resume(h, wal)
    core.handle(ProposalReceived(proposal(proposer_key(h, 2), h, 2, v)))
    feed_votes(core, KEYS[1:3], PREVOTE, h, 2, v.hash())
    assert (core.valid_round, core.valid_value) == (2, v)
    feed_votes(core, KEYS[1:3], PRECOMMIT, h, 2, None)
    effects = core.handle(TimeoutFired("precommit", h, 2))
    assert GetValue(h, 3) not in effects
    [p] = sent_proposals(effects)
    assert (p.round, p.block, p.pol_round) == (3, v, 2)
    [pv] = sent_votes(effects)
    assert (pv.round, pv.block_hash) == (3, v.hash())

    # v arrives between GetValue and the driver's answer: the valid value wins over the fresh block
    # (L15-L16), with its proof-of-lock round; the fresh block never gets a false pol_round.
    core = new_core()
    core.resume(h, wal)
    feed_votes(core, KEYS[1:3], PRECOMMIT, h, 2, None)
    assert GetValue(h, 3) in core.handle(TimeoutFired("precommit", h, 2))
    core.handle(ProposalReceived(proposal(proposer_key(h, 2), h, 2, v)))
    [p] = sent_proposals(core.handle(ValueToPropose(h, 3, w)))
    assert (p.round, p.block, p.pol_round) == (3, v, 2)


def test_resume_after_prevote_only_waits_in_prevote_and_then_precommits():
    h = height_where(set())
    wal, v = crashed_in_round_2(h)
    core = new_core()
    effects = core.resume(h, wal[:-1])  # crashed after the round-2 prevote
    assert (core.round, core.step, core.locked_round) == (2, Step.PREVOTE, -1)
    assert broadcasts(effects) == [wal[4]]
    core.handle(ProposalReceived(proposal(proposer_key(h, 2), h, 2, v)))
    effects = feed_votes(core, KEYS[1:3], PREVOTE, h, 2, v.hash())
    # The precommit it now signs is the same it signed before the crash (Ed25519 is deterministic).
    assert persisted(effects) == [wal[5]]
    assert_no_conflicts(wal + persisted(effects))


def test_resume_as_proposer_resends_its_proposal_and_does_not_ask_for_a_value():
    h = height_where({1})
    before = new_core()
    wal = persisted(before.start_height(h))
    wal += persisted(before.handle(TimeoutFired("propose", h, 0)))
    wal += persisted(before.handle(TimeoutFired("prevote", h, 0)))
    effects = before.handle(TimeoutFired("precommit", h, 0))
    assert GetValue(h, 1) in effects
    block = make_block(h, ME, b"mine", round=1)
    wal += persisted(before.handle(ValueToPropose(h, 1, block)))
    own_proposal, own_prevote = wal[-2:]
    assert isinstance(own_proposal, Proposal) and own_prevote.block_hash == block.hash()

    # Crashed between persisting the proposal and prevoting: StartRound(1) re-sends the proposal,
    # then L22 prevotes for it.
    core = new_core()
    effects = core.resume(h, wal[:-1])
    assert core.round == 1
    assert GetValue(h, 1) not in effects
    assert sent_proposals(effects) == [own_proposal]
    assert persisted(effects) == [own_prevote]
    assert core.handle(ValueToPropose(h, 1, make_block(h, ME, b"other", round=1))) == []

    # Crashed after prevoting: re-sends both, signs nothing.
    core = new_core()
    effects = core.resume(h, wal)
    assert (core.round, core.step) == (1, Step.PREVOTE)
    assert broadcasts(effects) == [own_proposal, own_prevote] and persisted(effects) == []
    assert GetValue(h, 1) not in effects


def test_resume_restores_the_valid_value_of_its_own_proposal_and_reproposes_it():
    h = height_where({1, 5}, rounds=6)
    assert proposer_for(VSET, h, 5) == ME_ID  # 4 validators rotate: ME proposes rounds 1 and 5
    before = new_core()
    wal = persisted(before.start_height(h))
    go_to_round(before, h, 1)
    wal = [m for m in before.height_messages() if m.validator == ME_ID]
    block = make_block(h, ME, b"mine", round=1)
    wal += persisted(before.handle(ValueToPropose(h, 1, block)))
    wal += persisted(feed_votes(before, KEYS[1:3], PREVOTE, h, 1, block.hash()))  # lock in round 1
    assert before.locked_round == 1

    core = new_core()
    core.resume(h, wal)
    assert (core.locked_round, core.locked_value, core.valid_round, core.valid_value) == (1, block, 1, block)
    feed_votes(core, KEYS[1:4], PRECOMMIT, h, 1, None)
    core.handle(TimeoutFired("precommit", h, 1))
    go_to_round(core, h, 4)
    effects = core.handle(TimeoutFired("precommit", h, 4))
    assert core.round == 5 and GetValue(h, 5) not in effects
    [p] = sent_proposals(effects)
    assert (p.round, p.pol_round, p.block) == (5, 1, block)  # L15-L16: validValue with validRound


def test_resume_with_no_wal_is_start_height():
    h = height_where({0})
    a, b = new_core(), new_core()
    assert a.resume(h, []) == b.start_height(h)
    assert (a.round, a.step) == (b.round, b.step) == (0, Step.PROPOSE)


def test_resume_replays_messages_buffered_for_the_height():
    core = new_core()
    assert core.handle(VoteReceived(vote(KEYS[1], PREVOTE, 1, 0, None))) == []
    core.resume(1, [])
    assert core._keeper.stake_any(0, PREVOTE) == 1


def test_resume_uses_the_given_validator_set():
    h = height_where(set())
    wal, _ = crashed_in_round_2(h)
    heavier = ValidatorSet(Validator.from_public_key(k.public_key, 1 + i, f"v{i}") for i, k in enumerate(KEYS))
    core = new_core()
    core.resume(h, wal, heavier)  # (the WAL holds only votes, so the proposer order does not matter)
    assert core.validator_set is heavier
    assert core._keeper.quorum == heavier.quorum == 7


# -- a corrupt or foreign WAL is refused, and nothing changes ------------------------------------------


def _bad_wals(h: int, wal: list) -> dict[str, tuple[list, str]]:
    other = vote(KEYS[1], PREVOTE, h, 2, None)
    forged = msgspec.structs.replace(wal[4], signature=bytes(64))
    double = vote(ME, PREVOTE, h, 2, None)  # wal[4] prevoted v in round 2
    wrong_height = vote(ME, PREVOTE, h + 1, 0, None)
    not_proposer_key = proposer_key(h, 0)
    foreign_proposal = proposal(not_proposer_key, h, 0, make_block(h, not_proposer_key))
    unsigned = Proposal(h, 0, -1, make_block(h, ME), ME_ID, b"")
    mine_not_my_round = msgspec.structs.replace(
        unsigned, signature=ME.sign(PROPOSAL_SIGN_DOMAIN, unsigned.sign_bytes(CHAIN))
    )
    return {
        "other validator": (wal + [other], "not by this validator"),
        "bad signature": (wal[:4] + [forged], "bad signature"),
        "double vote": (wal + [double], "two different messages for the same step"),
        "wrong height": (wal + [wrong_height], f"not for height {h}"),
        "foreign proposal": (wal + [foreign_proposal], "not by this validator"),
        "not my round": (wal + [mine_not_my_round], "not the proposer"),
        "not a message": (wal + ["vote"], "not a Proposal or Vote"),
    }


@pytest.mark.parametrize("case", ["other validator", "bad signature", "double vote", "wrong height",
                                  "foreign proposal", "not my round", "not a message"])
def test_resume_refuses_a_wal_that_is_not_this_validators(case):
    h = height_where(set())
    wal, _ = crashed_in_round_2(h)
    bad, match = _bad_wals(h, wal)[case]
    core = new_core()
    core.start_height(h - 1)
    with pytest.raises(ValueError, match=match):
        core.resume(h, bad)  # type: ignore[arg-type]
    assert (core.height, core.round) == (h - 1, 0)  # unchanged
    core.resume(h, wal)  # the good WAL still works afterwards
    assert core.round == 2


def test_resume_refuses_signed_messages_for_an_observer_and_heights_that_do_not_grow():
    h = height_where(set())
    wal, _ = crashed_in_round_2(h)
    with pytest.raises(ValueError, match="no validator key"):
        new_core(key=None).resume(h, wal)
    core = new_core()
    core.resume(h, wal)
    with pytest.raises(ValueError, match="heights only grow"):
        core.resume(h, [])


# -- a cluster: crash in round 2, restart from the WAL, decide together ----------------------------------


class MiniNet:
    """A tiny deterministic driver for four cores: instant delivery to every live node, a virtual
    clock for timeouts, re-gossip of each live node's message log whenever the network is quiet
    (the paper's gossip assumption, as the node daemon does), and crash points."""

    def __init__(self, h: int, drop: Callable[[int, object], bool]) -> None:
        self.h = h
        self.drop = drop
        self.cores: list[ConsensusCore | None] = [new_core(key=k) for k in KEYS]
        self.wal: list[list] = [[] for _ in KEYS]
        self.queue: deque = deque()
        self.timers: list[tuple[int, int, int, ScheduleTimeout]] = []  # (due, seq, node, timeout)
        self.now = 0
        self.seq = 0
        self.decided: dict[int, Decide] = {}
        self.crash_when: Callable[[int, object], bool] = lambda i, m: False

    def perform(self, i: int, effects: list) -> None:
        for e in effects:
            core = self.cores[i]
            if core is None:
                return  # crashed: the rest of its effects never happen
            if isinstance(e, PersistWAL):
                self.wal[i].append(e.entry)
                if self.crash_when(i, e.entry):
                    self.cores[i] = None
                    self.timers = [t for t in self.timers if t[2] != i]
            elif isinstance(e, Broadcast):
                for j in range(len(self.cores)):
                    if j != i and not self.drop(j, e.message):
                        self.queue.append((j, e.message))
            elif isinstance(e, ScheduleTimeout):
                self.seq += 1
                self.timers.append((self.now + e.duration_ms, self.seq, i, e))
            elif isinstance(e, GetValue):
                block = make_block(e.height, KEYS[i], f"r{e.round}".encode(), round=e.round)
                self.perform(i, core.handle(ValueToPropose(e.height, e.round, block)))
            elif isinstance(e, Decide):
                self.decided[i] = e

    def deliver(self) -> None:
        while self.queue:
            j, message = self.queue.popleft()
            core = self.cores[j]
            if core is not None:
                inp = ProposalReceived(message) if isinstance(message, Proposal) else VoteReceived(message)
                self.perform(j, core.handle(inp))

    def run(self, max_steps: int = 500) -> None:
        """Until every live core has decided, or nothing is left to do."""
        for _ in range(max_steps):
            self.deliver()
            live = [i for i, c in enumerate(self.cores) if c is not None]
            if all(i in self.decided for i in live):
                return
            for i in live:  # re-gossip
                for message in self.cores[i].height_messages():  # type: ignore[union-attr]
                    for j in range(len(self.cores)):
                        if j != i and not self.drop(j, message):
                            self.queue.append((j, message))
            self.deliver()
            if not self.timers:
                return
            self.timers.sort()
            due, _, i, t = self.timers.pop(0)
            self.now = max(self.now, due)
            core = self.cores[i]
            if core is not None:
                self.perform(i, core.handle(TimeoutFired(t.kind, t.height, t.round)))
        raise AssertionError("mini-net did not settle")


def test_crashed_validator_resumes_round_2_and_the_cluster_decides():
    # A height where KEYS[1] proposes round 2 (KEYS[3] is down for the whole height).
    h = next(h for h in range(2, 500) if proposer_for(VSET, h, 2) == KEYS[1].public_key.hex())
    down = 3
    # Rounds 0 and 1 fail (their proposals are lost); node 3 receives nothing.
    net = MiniNet(h, drop=lambda j, m: j == down or (isinstance(m, Proposal) and m.round < 2))
    net.cores[down] = None
    # ME crashes right after persisting its round-2 precommit, before sending it.
    net.crash_when = lambda i, m: i == 0 and isinstance(m, Vote) and m.vote_type == PRECOMMIT and m.round == 2
    for i in range(3):
        net.perform(i, net.cores[i].start_height(h))  # type: ignore[union-attr]
    net.run()
    assert net.cores[0] is None
    [signed_precommit] = [m for m in net.wal[0] if m.round == 2 and isinstance(m, Vote) and m.vote_type == PRECOMMIT]
    assert signed_precommit.block_hash is not None
    # Without ME's precommit only 2 of 4 precommitted: no one could decide.
    assert net.decided == {}
    assert all(net.cores[i].round == 2 for i in (1, 2))  # type: ignore[union-attr]

    wal_before = list(net.wal[0])
    net.cores[0] = restarted = new_core()
    net.perform(0, restarted.resume(h, wal_before))
    assert restarted.round == 2
    net.run()
    blocks = {i: d.block.hash() for i, d in net.decided.items()}
    assert blocks == {0: signed_precommit.block_hash, 1: signed_precommit.block_hash, 2: signed_precommit.block_hash}
    assert {d.certificate.round for d in net.decided.values()} == {2}
    # ME signed nothing conflicting across the crash, and nothing in a round below 2 after it.
    assert_no_conflicts(net.wal[0])
    assert all(m.round >= 2 for m in net.wal[0][len(wal_before):])


def test_without_resume_the_restarted_validator_would_start_over_in_round_0():
    """Why resume exists: start_height after a crash puts the validator back in round 0, where it
    may sign round-0 messages after having voted in round 2."""
    h = height_where(set())
    wal, _ = crashed_in_round_2(h)
    old_style = new_core()
    old_style.start_height(h)
    for m in wal:
        old_style.handle(VoteReceived(m))
    assert old_style.round == 0  # its own votes alone (stake 1 < f+1 = 2) do not move it
    resumed = new_core()
    resumed.resume(h, wal)
    assert resumed.round == 2
