"""Hostile peers against a real 4-validator testnet (node processes on 127.0.0.1).

Each hostile peer runs in this (trio) process with a fresh libp2p key of its own (it is no
validator) and dials the nodes' libp2p addresses, as anyone who learnt them could. Throughout every
attack the honest validators must keep committing: on each node, the longest time without a height
increase is at most one failed round (timeout_propose + timeout_prevote + timeout_precommit of the
config used) plus 3 s (``hostile_peer.GAP_SLACK_S``); that bound is the only timing asserted.

One testnet serves the cheap scenarios (class ``TestHostilePeers``, each with peers of its own):

1. a valid-message flood: ~500 well-formed status messages per second for 3 s, then stale
   (replayed) votes: the flooder is banned by every node (``/v1/status`` ``peer_filter.banned``,
   ``/metrics`` ``awnode_peer_penalties_total`` / ``awnode_gossip_dropped_total``), and the stale votes under
   its rate limit are screened out before pubsub forwards them (``stale_vote`` drops);
2. height lies (status at 10**9, commit announcements and votes for far-future heights), by liars
   whose sync answers nothing / stalls / fails: nodes at the tip sample ``syncing`` and ``/ready``;
   one futile fetch per node and liar at most, after which the liar is distrusted, and not one
   ``syncing`` or 503 sample;
3. votes from unknown keys (34 points each) and votes with bad signatures (50): both senders banned
   (threshold 100);
4. a peer subscribed to ``status`` only: the nodes' py-libp2p "pending message queue" warnings are
   rate-limited (``network/log_bridge.py``), so their logs stay bounded;
5. pubsub frames above the inbound RPC limit: scored ``oversize`` and cut, banned when repeated.

6. (its own testnet) a validator run with its clock 1 h ahead, then restarted with the right clock:
   its proposals are untimely for the others while ahead (``proposal_untimely``), the chain's time
   never moves ahead, and after the restart its peers hear it again (its signed peer record's seq
   went back) and a block it proposes is committed.

Every node process is stopped by pid in a finally and its directory removed (set
``HOSTILE_TESTNET_KEEP=1`` to keep the node logs); each test is bounded (pytest-timeout and
trio.fail_after).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import time

import pytest
import structlog
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.utils.varint import encode_uvarint
from multiaddr import Multiaddr

from agent_world_client.client import ClientError, NodeClient
from agent_world_node.config import read_config
from agent_world_node.network.config import INBOUND_RPC_HARD_LIMIT
from agent_world_node.network.host import PUBSUB_PROTOCOLS, build_host, key_pair_from_seed
from agent_world_node.network.log_bridge import BURST, WINDOW_S
from agent_world_node.network.peer_filter import PENALTY_POINTS
from agent_world_node.network.topics import topic_ids
from agent_world_node.types import Offence
from agent_world_runtime.crypto import SigningKey
from agent_world_tools.testnet import NodeProcess

from .hostile_peer import (
    Heard,
    LogMark,
    RawPublisher,
    Testnet,
    Watch,
    answer_nothing,
    commit_announcement,
    fail,
    hostile_network,
    metric,
    shifted_clock_process,
    stale_votes,
    stall,
    status_message,
    vote_message,
    wait_meshed,
)

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(180)]

#: Bound on each scenario's trio run (startup of the shared testnet excluded).
SCENARIO_S = 150.0
#: Bound on one wait for a node to react (a ban, a few commits).
REACT_S = 30.0
FLOOD_S = 3.0
#: Flood messages per second, written to each node in frames of ``FLOOD_BATCH`` messages.
FLOOD_RATE = 500
FLOOD_BATCH = 25
FAR = 10**9
SUBSCRIBER_S = 25.0
HOUR_MS = 3_600_000
#: Heights the validator with the shifted clock must follow before it is restarted.
SKEWED_HEIGHTS = 8
#: Set to keep the testnet directories (node logs) after the tests, e.g. to study a failure.
KEEP_ENV = "HOSTILE_TESTNET_KEEP"


@pytest.fixture(autouse=True)
def _quiet_structlog():
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    yield
    structlog.reset_defaults()


def run(scenario, *args) -> None:
    async def bounded() -> None:
        with trio.fail_after(SCENARIO_S):
            await scenario(*args)

    trio.run(bounded)


# --- shared steps -----------------------------------------------------------------------------------


async def metrics(watch: Watch) -> dict[str, str]:
    return {name: await c.metrics() for name, c in watch.clients.items()}


def dropped_reasons(text: str) -> set[str]:
    return set(re.findall(r'^awnode_gossip_dropped_total\{reason="([^"]+)"\}', text, re.M))


def deltas(before: dict[str, str], after: dict[str, str], name: str, **labels: str) -> dict[str, float]:
    return {n: metric(after[n], name, **labels) - metric(before[n], name, **labels) for n in after}


async def until(predicate, what: str, testnet: Testnet, timeout_s: float = REACT_S, detail=lambda: "") -> None:
    with trio.move_on_after(timeout_s):
        while not predicate():
            testnet.check_alive()
            await trio.sleep(0.1)
        return
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; {detail()}")


def banned_everywhere(watch: Watch, peer: str) -> bool:
    return all(peer in s["peer_filter"]["banned"] for s in watch.status.values()) and len(watch.status) == len(
        watch.clients)


async def commits_continue(watch: Watch, testnet: Testnet, heights: int = 2) -> None:
    start = {n: watch.height(n) for n in watch.clients}
    await until(lambda: all(watch.height(n) >= start[n] + heights for n in start),
                f"every node to commit {heights} more heights", testnet, detail=lambda: f"from {start}")


def assert_no_stall(watch: Watch, testnet: Testnet, t0: float, t1: float, what: str) -> dict[str, float]:
    gaps = watch.max_gap(t0, t1)
    bound = testnet.gap_bound_s()
    assert max(gaps.values()) <= bound, (
        f"{what}: an honest node went {max(gaps.values())} s without committing (bound {bound} s): {gaps}")
    return gaps


async def started_watch(nursery: trio.Nursery, testnet: Testnet, names: list[str] | None = None,
                        poll_ready: bool = False) -> Watch:
    watch = Watch(testnet, names, poll_ready=poll_ready)
    nursery.start_soon(watch.run)
    await until(lambda: len(watch.status) == len(watch.clients), "a first status of every node", testnet)
    return watch


# --- the scenarios on a shared testnet -------------------------------------------------------------


@pytest.fixture(scope="class")
def testnet(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hostile")
    net = Testnet.create(directory / "tn")
    try:
        net.start()
        trio.run(net.wait_ready, 90.0, 5)
        yield net
    finally:
        net.stop()
        if not os.environ.get(KEEP_ENV):
            shutil.rmtree(directory, ignore_errors=True)


class TestHostilePeers:
    def test_valid_message_flood_gets_the_flooder_banned(self, testnet):
        run(flood_then_stale_votes, testnet)

    def test_forged_votes_get_their_senders_banned(self, testnet):
        run(forged_votes, testnet)

    def test_oversized_rpc_frames_are_scored_and_cut(self, testnet):
        run(oversized_frames, testnet)

    def test_a_status_only_subscriber_keeps_node_logs_bounded(self, testnet):
        run(status_only_subscriber, testnet)

    def test_height_lies_from_a_peer_that_answers_nothing(self, testnet):
        run(height_lies, testnet, answer_nothing)

    def test_height_lies_from_a_peer_whose_sync_fails(self, testnet):
        run(height_lies, testnet, fail)

    def test_height_lies_from_a_peer_whose_sync_stalls(self, testnet):
        run(height_lies, testnet, stall)


async def flood_then_stale_votes(testnet: Testnet) -> None:
    """1. ~500 well-formed status messages per second for 3 s from one peer (frames of
    ``FLOOD_BATCH`` signed messages written straight to every node), then ~500 stale votes per
    second for 3 s from another (the precommits of an old block's certificate, validly signed by
    the validators: harmless one by one, above the vote topic's rate limit together)."""
    status_flooder, vote_flooder = RawPublisher(testnet), RawPublisher(testnet)
    async with trio.open_nursery() as nursery:
        watch = await started_watch(nursery, testnet)
        top = max(watch.height(n) for n in watch.clients)
        old_height = max(1, top - 3)
        old = stale_votes(testnet.chain_id, await watch.clients[testnet.names[0]].block(old_height))
        frames = math.ceil(FLOOD_S * FLOOD_RATE / FLOOD_BATCH)
        flood = {
            "status": (status_flooder, [[status_flooder.message("status", status_message(top))
                                         for _ in range(FLOOD_BATCH)] for _ in range(frames)]),
            "stale vote": (vote_flooder, [[vote_flooder.message("vote", old[(f * FLOOD_BATCH + k) % len(old)])
                                           for k in range(FLOOD_BATCH)] for f in range(frames)]),
        }
        before = await metrics(watch)
        cpu_before = testnet.cpu_seconds()
        written: dict[str, int] = {}
        phases: dict[str, tuple[float, float]] = {}
        t0 = trio.current_time()
        for what, (flooder, batches) in flood.items():
            phase_start = trio.current_time()
            async with flooder.run():
                start = trio.current_time()
                written[what] = 0
                for f, messages in enumerate(batches):
                    await trio.sleep_until(start + f * FLOOD_BATCH / FLOOD_RATE)
                    if await flooder.send(messages):
                        written[what] += len(messages)
                if what == "status":
                    await until(lambda: banned_everywhere(watch, status_flooder.peer_id),
                                "every node to ban the status flooder", testnet,
                                detail=lambda: f"{ {n: s['peer_filter'] for n, s in watch.status.items()} }")
                else:  # stale votes are screened out unchecked and unscored; only the rate limit may ban
                    await trio.sleep(1.5)
            phases[what] = (phase_start, trio.current_time())
        t1 = trio.current_time()
        vote_flooder_banned = [n for n, s in watch.status.items() if vote_flooder.peer_id in s["peer_filter"]["banned"]]
        cpu = {n: round(c - cpu_before[n], 1) for n, c in testnet.cpu_seconds().items()}
        await commits_continue(watch, testnet)
        await trio.sleep(1.5)  # /metrics gauges are refreshed with each status heartbeat (1 s)
        after = await metrics(watch)
        gaps = watch.max_gap(t0, t1)
        phase_gaps = {what: max(watch.max_gap(a, b).values()) for what, (a, b) in phases.items()}
        rate_limited = deltas(before, after, "awnode_peer_penalties_total", reason="rate_limited")
        all_dropped = {n: {r: v for r in dropped_reasons(after[n]) if (v := deltas(before, after, "awnode_gossip_dropped_total",
                                                                                     reason=r)[n])}
                       for n in after}
        print(f"\n1. flood ({FLOOD_RATE}/s offered in frames of {FLOOD_BATCH}, each flooder for {FLOOD_S:.0f} s or until "
              f"every node cut it): written to every node {written} (stale votes of height {old_height}, tip {top}); "
              f"status flooder banned by all 4; vote flooder banned by {vote_flooder_banned}; {t1 - t0:.1f} s in all; "
              f"rate_limited penalties {rate_limited}; gossip "
              f"drops {all_dropped}; node CPU seconds meanwhile {cpu}; max height gap per node {gaps} s, by phase {phase_gaps} "
              f"(bound {testnet.gap_bound_s()} s)")
        for n, s in watch.status.items():
            assert rate_limited[n] >= 100 / PENALTY_POINTS[Offence.RATE_LIMITED], (n, rate_limited)
            assert all_dropped[n].get("rate_limited", 0) >= 1, (n, all_dropped)
            # the stale votes under the rate limit are screened out before pubsub forwards them
            assert all_dropped[n].get("stale_vote", 0) >= 1, (n, all_dropped)
            assert status_flooder.peer_id not in s["peers"], (n, s["peers"])
        nursery.cancel_scope.cancel()
    await watch.aclose()
    assert max(gaps.values()) <= testnet.gap_bound_s(), (
        f"flood: an honest node went {max(gaps.values())} s without committing (bound {testnet.gap_bound_s()} s): "
        f"{gaps}, by phase {phase_gaps}")


async def forged_votes(testnet: Testnet) -> None:
    """3. Votes signed by a key outside the validator set, and votes in a validator's name with a
    garbage signature, two heights ahead of the tip (judged, never dropped as stale): 34 and 50
    points a vote, so 3 and 2 of them ban their sender."""
    node_ids = [testnet.peer_id(i) for i in range(len(testnet.nodes))]
    unknown, forger = hostile_network(testnet), hostile_network(testnet)
    outsider = SigningKey(os.urandom(32))
    validator = testnet.validator_keys()[0]
    async with trio.open_nursery() as nursery:
        watch = await started_watch(nursery, testnet)
        async with unknown.run(), forger.run():
            for net in (unknown, forger):
                nursery.start_soon(Heard().run, net)
                await wait_meshed(net, node_ids)
            before = await metrics(watch)
            sent = {"unknown_validator": 0, "bad_signature": 0}
            t0 = trio.current_time()
            with trio.move_on_after(REACT_S):
                while not (banned_everywhere(watch, unknown.peer_id) and banned_everywhere(watch, forger.peer_id)):
                    testnet.check_alive()
                    h = max(watch.height(n) for n in watch.clients) + 2
                    if not banned_everywhere(watch, unknown.peer_id):
                        await unknown.publish("vote", vote_message(testnet.chain_id, outsider, h))
                        sent["unknown_validator"] += 1
                    if not banned_everywhere(watch, forger.peer_id):
                        await forger.publish("vote", vote_message(testnet.chain_id, outsider, h, validator=validator,
                                                                  sign=False))
                        sent["bad_signature"] += 1
                    await trio.sleep(0.25)
            t1 = trio.current_time()
            assert banned_everywhere(watch, unknown.peer_id), {n: s["peer_filter"] for n, s in watch.status.items()}
            assert banned_everywhere(watch, forger.peer_id), {n: s["peer_filter"] for n, s in watch.status.items()}
            await commits_continue(watch, testnet)
            await trio.sleep(1.5)
            after = await metrics(watch)
        gaps = assert_no_stall(watch, testnet, t0, t1, "forged votes")
        judged = {r: deltas(before, after, "awnode_peer_penalties_total", reason=r) for r in sent}
        print(f"\n3. forged votes: sent until banned by all 4 nodes {sent} in {t1 - t0:.1f} s; penalties per node "
              f"{judged}; max height gap per node {gaps} s")
        for n in watch.clients:
            assert judged["unknown_validator"][n] >= 3 and judged["bad_signature"][n] >= 2, (n, judged)
        nursery.cancel_scope.cancel()
    await watch.aclose()


async def oversized_frames(testnet: Testnet) -> None:
    """5. A pubsub frame whose length prefix is above any allowed inbound RPC limit: each node scores
    it (``oversize``, 20 points), counts it (``oversize_rpc``) and cuts the connection; a sender
    that keeps doing it to node0 is banned there."""
    seed = os.urandom(32)
    me = None
    frame = encode_uvarint(INBOUND_RPC_HARD_LIMIT + 1) + b"\x00" * 1024

    async def send_oversized(i: int, watch: Watch) -> bool:
        """Connect to node ``i``, write one oversized frame on a pubsub stream, wait until node ``i``
        no longer lists this peer as connected. False when node ``i`` refused the connection or the
        stream (banned)."""
        raw = build_host(key_pair_from_seed(seed), Multiaddr("/ip4/127.0.0.1/tcp/0"))
        me = raw.get_id().to_base58()
        name = testnet.names[i]
        target = info_from_p2p_addr(Multiaddr(testnet.p2p_addr(i)))
        async with raw.run([Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            try:
                await raw.connect(target)
                stream = await raw.new_stream(target.peer_id, list(PUBSUB_PROTOCOLS))
                await until(lambda: me in watch.status[name]["peers"], f"{name} to list the sender", testnet)
                await stream.write(frame)
            except Exception:
                await raw.close()
                return False
            await until(lambda: me not in watch.status[name]["peers"],
                        f"{name} to cut a peer that sent an oversized frame", testnet)
            await raw.close()
        return True

    async with trio.open_nursery() as nursery:
        watch = await started_watch(nursery, testnet)
        before = await metrics(watch)
        t0 = trio.current_time()
        for i in range(len(testnet.nodes)):
            assert await send_oversized(i, watch)
        me = build_host(key_pair_from_seed(seed), Multiaddr("/ip4/127.0.0.1/tcp/0")).get_id().to_base58()
        await trio.sleep(1.5)
        scored = await metrics(watch)
        once = deltas(before, scored, "awnode_peer_penalties_total", reason="oversize")
        counted = deltas(before, scored, "awnode_gossip_dropped_total", reason="oversize_rpc")
        attempts = 1
        node0 = testnet.names[0]
        while me not in watch.status[node0]["peer_filter"]["banned"] and attempts < 12:
            if not await send_oversized(0, watch):
                await trio.sleep(0.5)
            attempts += 1
        await until(lambda: me in watch.status[node0]["peer_filter"]["banned"], "node0 to ban the sender", testnet)
        t1 = trio.current_time()
        await commits_continue(watch, testnet)
        gaps = assert_no_stall(watch, testnet, t0, t1, "oversized frames")
        print(f"\n5. oversized frames: one per node: oversize penalties {once}, oversize_rpc drops {counted}; "
              f"node0 banned the sender after {attempts} frames; max height gap per node {gaps} s")
        assert all(v >= 1 for v in once.values()) and all(v >= 1 for v in counted.values()), (once, counted)
        for n, s in watch.status.items():
            assert me not in s["peers"], (n, s["peers"])
        nursery.cancel_scope.cancel()
    await watch.aclose()


async def status_only_subscriber(testnet: Testnet) -> None:
    """4. A peer that subscribes to ``status`` only (a P2PNetwork limited to that topic): every
    node's py-libp2p queues the other topics' messages for it and warns once per message beyond
    its queue; the log bridge lets at most ``BURST`` of each template through per ``WINDOW_S``
    plus one ``libp2p_log_suppressed`` line per window."""
    node_ids = [testnet.peer_id(i) for i in range(len(testnet.nodes))]
    peer = hostile_network(testnet)
    peer._topics = {"status": topic_ids(testnet.chain_id)["status"]}  # subscribe (and allow) status only
    mark = LogMark(testnet)
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        watch = await started_watch(nursery, testnet)
        async with peer.run():
            nursery.start_soon(Heard().run, peer)
            await wait_meshed(peer, node_ids)
            t0 = trio.current_time()
            await trio.sleep(SUBSCRIBER_S)
            testnet.check_alive()
            t1 = trio.current_time()
        await commits_continue(watch, testnet)
        gaps = assert_no_stall(watch, testnet, t0, t1, "status-only subscriber")
        elapsed = trio.current_time() - started
        windows = math.ceil(elapsed / WINDOW_S) + 1
        bound = (BURST + 1) * windows
        counts = {n: {"pending_queue": mark.count(n, "pending message queue"), "libp2p_log": mark.count(n, "libp2p_log"),
                      "suppressed": mark.count(n, "libp2p_log_suppressed"), "lines": len(mark.lines(n))}
                  for n in testnet.names}
        print(f"\n4. status-only subscriber for {t1 - t0:.0f} s ({elapsed:.0f} s counted): log lines per node {counts} "
              f"(bound on 'pending message queue' lines: {bound}); max height gap per node {gaps} s")
        assert any(c["pending_queue"] for c in counts.values()), (
            "no node warned about its pending message queue: the scenario did not exercise the log path", counts)
        for n, c in counts.items():
            assert c["pending_queue"] <= bound, (n, c, bound)
        nursery.cancel_scope.cancel()
    await watch.aclose()


async def height_lies(testnet: Testnet, sync_behaviour) -> None:
    """2. A liar claims height 10**9 in status messages (2 a second, under the status rate limit),
    announces commits of far-future heights (a certificate consistent with the header, garbage
    signatures) and sends two far-future votes from an unknown key (68 points: not banned). Nodes
    at the tip may try one fetch from it; after that futile fetch it must be distrusted: no more
    fetches. An unverified claim never makes a node at the tip report ``syncing`` or answer
    ``/ready`` 503, not even during that fetch."""
    node_ids = [testnet.peer_id(i) for i in range(len(testnet.nodes))]
    liar = hostile_network(testnet, sync_behaviour)
    outsider = SigningKey(os.urandom(32))
    validators = testnet.validator_keys()
    mark = LogMark(testnet)
    async with trio.open_nursery() as nursery:
        watch = await started_watch(nursery, testnet, poll_ready=True)
        async with liar.run():
            nursery.start_soon(Heard().run, liar)
            await wait_meshed(liar, node_ids)
            # long enough for two fetches to end even if each waits for the whole sync timeout
            lie_s = 2 * read_config(testnet.nodes[0].home.config_file).policy.sync_timeout_ms / 1000 + 2
            t0 = trio.current_time()
            k = 0
            while trio.current_time() < t0 + lie_s:
                testnet.check_alive()
                await liar.publish("status", status_message(FAR))
                await liar.publish("commit", commit_announcement(testnet.chain_id, FAR + k, validators))
                if k in (0, 10):
                    await liar.publish("vote", vote_message(testnet.chain_id, outsider, FAR + k))
                k += 1
                await trio.sleep(0.5)
            t1 = trio.current_time()
            await commits_continue(watch, testnet)
        me = liar.peer_id
        futile = {}
        for n in testnet.names:
            fetches = [e for e in mark.events(n, "sync_made_no_progress") + mark.events(n, "sync_failed")
                       if e.get("peer") == me]
            futile[n] = len(fetches)
        gaps = assert_no_stall(watch, testnet, t0, t1, f"height lies ({sync_behaviour.__name__})")
        syncing = watch.counts(watch.syncing, t0, t1, True)
        not_ready = watch.counts(watch.ready, t0, t1, False)
        syncing_runs = watch.episodes(watch.syncing, t0, t1, True)
        not_ready_runs = watch.episodes(watch.ready, t0, t1, False)
        banned = {n: me in s["peer_filter"]["banned"] for n, s in watch.status.items()}
        print(f"\n2. height lies, liar's sync {sync_behaviour.__name__}: {k} rounds of lies in {t1 - t0:.0f} s; "
              f"futile fetches from the liar per node {futile}; samples syncing {syncing} (runs {syncing_runs}); "
              f"/ready 503 {not_ready} (runs {not_ready_runs}); liar banned {banned}; max height gap per node {gaps} s")
        for n in testnet.names:
            assert futile[n] <= 1, f"{n} fetched {futile[n]} times from a peer whose claims no fetch backed: {futile}"
            assert syncing_runs[n] == 0, f"{n} went syncing {syncing_runs[n]} times on a lie: {syncing_runs}"
            assert not_ready_runs[n] == 0, f"{n} went not ready {not_ready_runs[n]} times on a lie: {not_ready_runs}"
        nursery.cancel_scope.cancel()
    await watch.aclose()


# --- 6. a validator whose clock was an hour ahead ---------------------------------------------------


def test_a_validator_restarted_after_its_clock_was_an_hour_ahead_is_heard_again(tmp_path):
    net = Testnet.create(tmp_path / "tn")
    skewed = 3
    net.procs[skewed] = shifted_clock_process(net.nodes[skewed], HOUR_MS)
    try:
        net.start()
        run(clock_change, net, skewed)
    finally:
        net.stop()
        if not os.environ.get(KEEP_ENV):
            shutil.rmtree(tmp_path / "tn", ignore_errors=True)


async def clock_change(net: Testnet, skewed: int) -> None:
    honest = [n for i, n in enumerate(net.names) if i != skewed]
    name = net.names[skewed]
    key = net.validator_keys()[skewed]
    await net.wait_ready()
    mark = LogMark(net)
    async with trio.open_nursery() as nursery:
        watch = await started_watch(nursery, net)
        t0 = trio.current_time()

        def untimely() -> list[dict]:
            return [e for n in honest for e in mark.events(n, "proposal_untimely") if key.startswith(e["proposer"])]

        # Ahead: its proposals are from the future for the others; it follows their commits.
        await until(lambda: len(untimely()) >= 1, f"{name}'s proposals judged untimely", net, timeout_s=60)
        ahead = untimely()
        assert all(e["reason"] == "from_the_future" and e["offset_ms"] > HOUR_MS // 2 for e in ahead), ahead
        await until(lambda: watch.height(name) >= max(watch.height(n) for n in honest) - 1,
                    f"{name} at the cluster's height while ahead", net)
        followed_from = watch.height(name)
        await until(lambda: watch.height(name) >= followed_from + SKEWED_HEIGHTS,
                    f"{name} to follow {SKEWED_HEIGHTS} more heights while ahead", net)

        # Restarted with the right clock (same home, key and port).
        proc = net.procs[skewed]
        proc.stop(grace_s=15)
        watch.status.pop(name, None)
        net.procs[skewed] = proc = NodeProcess(net.nodes[skewed])
        proc.start()
        restarted_at = trio.current_time()
        tip_at_restart = max(watch.height(n) for n in honest)
        client = NodeClient(net.nodes[0].rpc_url, timeout_s=5.0)
        proposed: list[int] = []
        checked = tip_at_restart

        async def proposed_by_it() -> bool:
            nonlocal checked
            top = max(watch.height(n) for n in honest)
            for h in range(checked + 1, top + 1):
                try:
                    header = (await client.block(h))["header"]
                except ClientError:
                    return False
                checked = h
                if header["proposer"] == key:
                    proposed.append(h)
            return bool(proposed)

        with trio.move_on_after(90) as scope:
            while not await proposed_by_it():
                net.check_alive()
                await trio.sleep(0.5)
        assert not scope.cancelled_caught, (
            f"no block proposed by {name} was committed in 90 s after its restart (heights "
            f"{tip_at_restart + 1}..{checked}); its peers do not hear it?\n{proc.log_tail(30)}")
        await until(lambda: watch.height(name) >= max(watch.height(n) for n in honest) - 1,
                    f"{name} at the cluster's height after the restart", net)
        await commits_continue(watch, net)
        t1 = trio.current_time()

        top = min(watch.height(n) for n in watch.clients)
        now_ms = int(time.time() * 1000)
        headers = {h: (await client.block(h))["header"] for h in range(1, top + 1)}
        stamps = {h: header["timestamp_ms"] for h, header in headers.items()}
        while_ahead = [h for h, header in headers.items() if h <= tip_at_restart and header["proposer"] == key]
        await client.aclose()
        gaps = watch.max_gap(t0, t1)
        honest_gaps = {n: g for n, g in gaps.items() if n in honest}
        went_back = {n: len(mark.events(n, "peer_record_seq_went_back")) for n in honest}
        ahead = [e for e in untimely() if e["offset_ms"] > HOUR_MS // 2]
        print(f"\n6. clock: {len(ahead)} untimely proposals of {name} while 1 h ahead (offsets "
              f"{sorted({e['offset_ms'] // 1000 for e in ahead})} s); it followed the chain to height {tip_at_restart} "
              f"while ahead; restarted with the right clock: its proposal committed at heights {proposed} ({trio.current_time() - restarted_at:.0f} s after the "
              f"restart); peer_record_seq_went_back logged per node {went_back}; newest block time "
              f"{max(stamps.values()) - now_ms} ms from now; max height gap per honest node {honest_gaps} s "
              f"(bound {net.gap_bound_s()} s)")
        assert not while_ahead, f"blocks proposed by {name} while its clock was 1 h ahead were committed: {while_ahead}"
        assert max(stamps.values()) <= now_ms + net.precision_ms(), "the chain's time moved ahead of the clocks"
        assert all(b > a for a, b in zip(list(stamps.values()), list(stamps.values())[1:], strict=False))
        assert max(honest_gaps.values()) <= net.gap_bound_s(), honest_gaps
        nursery.cancel_scope.cancel()
    await watch.aclose()
