"""Real py-libp2p hosts in one trio process on 127.0.0.1 (free ports), for failures seen on a
4-validator testnet:

- a status flood (one origin, as fast as one py-libp2p sender goes) gets its origin banned by the
  per-topic rate limit while a validator node keeps committing, and the node's own honest traffic
  trips no limit at the flooder;
- a peer restarted with an earlier clock (its signed peer record's ``seq`` went back) still gets
  its gossip delivered;
- two ~900 KB messages back-to-back both arrive, with nobody disconnected or penalized; an RPC
  packing two of them in one frame (as another implementation may) is accepted; a frame above the
  inbound limit is scored and the peer cut, not silently dropped from pubsub.

Each test is bounded by ``trio.fail_after``; nothing asserts on timing.
"""

from __future__ import annotations

import time

import trio
from libp2p.peer import peer_record
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX
from libp2p.utils.varint import encode_uvarint, encode_varint_prefixed
from multiaddr import Multiaddr

from agent_world_node.network import TOPIC_NAMES, NetworkConfig, P2PNetwork, topic_id
from agent_world_node.network.host import PUBSUB_PROTOCOLS, build_host, key_pair_from_seed
from agent_world_node.network.local_cluster import start_local_cluster, wait_for_full_mesh
from agent_world_node.types import GossipStatusMessage
from agent_world_runtime.codec import encode

from .node_harness import running_node, single_validator_home

RUN_LIMIT_S = 60
SEEDS = [bytes([0x30 + i]) * 32 for i in range(3)]
CHAIN = "local-test"
#: Most flood messages sent; the flooder stops early once the node has banned it.
FLOOD_MAX = 3000
#: Pause between flood messages: without one, py-libp2p's sender drops most of a tight loop in
#: its own outbound queue (see tests/test_hostile_peer.py); ~2 ms lets ~200-500 msg/s through.
FLOOD_PACE_S = 0.001


async def no_blocks(from_height: int, to_height: int) -> list[bytes]:
    return []


async def _until(predicate, what: str, timeout_s: float = 20.0) -> None:
    with trio.move_on_after(timeout_s):
        while not predicate():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout_s} s waiting for: {what}")


# ---------------------------------------------------------------- status flood


def test_a_status_flood_bans_its_origin_while_the_validator_keeps_committing(tmp_path) -> None:
    home = single_validator_home(tmp_path / "solo", chain_id="flood")

    async def main() -> None:
        with trio.fail_after(RUN_LIMIT_S):
            async with running_node(home) as node:
                net = node.net
                flooder = P2PNetwork(
                    NetworkConfig(chain_id="flood", listen_addr="/ip4/127.0.0.1/tcp/0", peers=net.listen_addrs(),
                                  key_seed=SEEDS[0], reconnect_interval_s=0.3),
                    no_blocks,
                )
                async with flooder.run(), trio.open_nursery() as nursery:
                    nursery.start_soon(_discard, flooder)  # the node's gossip, to see it is not limited
                    me = flooder.peer_id
                    await _until(lambda: all(node.peer_id in flooder.mesh_peers(t) for t in TOPIC_NAMES),
                                 "the flooder meshed with the node")
                    await _until(lambda: flooder.stats()["received_by_topic"].get("vote", 0) >= 10,
                                 "the flooder hears the node's votes")
                    status = encode(GossipStatusMessage(0, 0, b"\x00" * 32))
                    height_before, started, sent = node.height, time.monotonic(), 0
                    banned_at = None
                    while sent < FLOOD_MAX and banned_at is None:
                        await flooder.publish("status", status)
                        sent += 1
                        await trio.sleep(FLOOD_PACE_S)
                        if net.peer_filter.is_banned(me):
                            banned_at = time.monotonic()
                    assert banned_at is not None, f"not banned after {sent} flood messages: {net.stats()}"
                    stats = net.stats()
                    arrived = stats["received_by_topic"].get("status", 0) + stats["dropped"].get("rate_limited", 0)
                    print(f"measured: banned {banned_at - started:.2f} s after the flood began, after {sent} "
                          f"sent ({sent / (banned_at - started):.0f}/s offered); {arrived} reached the node's "
                          f"filter, {stats['dropped'].get('rate_limited', 0)} rate-limited; "
                          f"heights {height_before} -> {node.height}")
                    assert set(stats["rate_limited_by_topic"]) == {"status"}
                    assert set(stats["penalties"]) == {"rate_limited"}
                    await _until(lambda: me not in net.connected_peers(), "the flooder disconnected")
                    await _until(lambda: node.height >= height_before + 3, "the node commits through the flood")
                    # the node's own traffic (proposals, votes, commits, status at its full pace)
                    # stays under every default limit at the flooder
                    assert flooder.stats()["penalties"] == {}
                    assert flooder.stats()["dropped"].get("rate_limited", 0) == 0
                    nursery.cancel_scope.cancel()

    trio.run(main)


async def _discard(net: P2PNetwork) -> None:
    async for _ in net.incoming:
        pass


# ---------------------------------------------------------------- stale peer records


def test_a_peer_restarted_with_an_earlier_clock_is_still_heard(monkeypatch) -> None:
    """Node B first runs with its clock an hour ahead (its signed peer record's seq is time_ns),
    then restarts (same key and port) with the right clock: A holds the newer-looking record.
    py-libp2p 0.8.1 would ignore every RPC of B's from then on."""
    hour_ns = 3600 * 10**9
    real = peer_record.timestamp_seq
    monkeypatch.setattr(peer_record, "timestamp_seq", lambda: real() + hour_ns)

    async def main() -> None:
        with trio.fail_after(RUN_LIMIT_S):
            async with trio.open_nursery() as nursery:
                a, b = await start_local_cluster(nursery, SEEDS[:2], no_blocks, reconnect_interval_s=0.3)
                await wait_for_full_mesh([a.network, b.network])
                await b.network.publish("vote", b"from the future")
                msg = await a.network.incoming.receive()
                assert (msg.data, msg.peer_id) == (b"from the future", b.network.peer_id)
                b_id = b.network._id
                stored = a.network._host.get_peerstore().peer_record_map[b_id].seq
                assert stored > time.time_ns() + hour_ns // 2

                await b.stop()
                monkeypatch.setattr(peer_record, "timestamp_seq", real)  # the clock is fixed
                await b.restart()
                await wait_for_full_mesh([a.network, b.network])
                await b.network.publish("vote", b"back in the present")
                msg = await a.network.incoming.receive()
                assert (msg.data, msg.peer_id) == (b"back in the present", b.network.peer_id)
                # A replaced the record by the one B sent over its own connection
                assert a.network._host.get_peerstore().peer_record_map[b_id].seq < stored
                assert a.network.stats()["penalties"] == {}
                await a.stop()
                await b.stop()

    trio.run(main)


# ---------------------------------------------------------------- large messages and RPC frames


def test_two_900kb_messages_back_to_back_arrive_and_nobody_is_cut() -> None:
    async def main() -> None:
        with trio.fail_after(RUN_LIMIT_S):
            async with trio.open_nursery() as nursery:
                handles = await start_local_cluster(nursery, SEEDS[:3], no_blocks)
                nets = [h.network for h in handles]
                await wait_for_full_mesh(nets)
                big = [bytes([k]) * 900_000 for k in range(2)]
                for data in big:
                    await nets[0].publish("proposal", data)
                for net in nets[1:]:
                    got = {(await net.incoming.receive()).data for _ in big}
                    assert got == set(big)
                for net in nets:
                    stats = net.stats()
                    assert stats["penalties"] == {} and stats["dropped"] == {}, stats
                    assert stats["reconnects"] == 0 and stats["dead_peers"] == 0
                    assert len(net.connected_peers()) == 2
                for h in handles:
                    await h.stop()

    trio.run(main)


def _signed_message(keys, data: bytes, topic: str, seqno: int) -> rpc_pb2.Message:
    from libp2p.peer.id import ID

    msg = rpc_pb2.Message(data=data, topicIDs=[topic], from_id=ID.from_pubkey(keys.public_key).to_bytes(),
                          seqno=seqno.to_bytes(8, "big"))
    msg.signature = keys.private_key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
    msg.key = keys.public_key.serialize()
    return msg


def test_an_rpc_of_two_large_messages_is_accepted_and_an_oversized_frame_is_scored() -> None:
    """Another implementation may pack two ~900 KB messages in one RPC (1.8 MB): accepted (the
    library's default limit of 1 MiB would reset the stream and drop the sender from pubsub
    silently). A frame above ``max_inbound_rpc_bytes`` is scored ``oversize`` and the peer cut."""

    async def main() -> None:
        with trio.fail_after(RUN_LIMIT_S):
            async with trio.open_nursery() as nursery:
                (node,) = await start_local_cluster(nursery, SEEDS[:1], no_blocks)
                net = node.network
                target = info_from_p2p_addr(Multiaddr(net.listen_addrs()[0]))
                keys = key_pair_from_seed(SEEDS[2])
                raw = build_host(keys, Multiaddr("/ip4/127.0.0.1/tcp/0"))
                async with raw.run([Multiaddr("/ip4/127.0.0.1/tcp/0")]):
                    await raw.connect(target)
                    stream = await raw.new_stream(target.peer_id, list(PUBSUB_PROTOCOLS))
                    topic = topic_id(CHAIN, "proposal")
                    big = [bytes([k]) * 900_000 for k in range(2)]
                    rpc = rpc_pb2.RPC(publish=[_signed_message(keys, d, topic, 1 + k) for k, d in enumerate(big)])
                    frame = encode_varint_prefixed(rpc.SerializeToString())
                    assert len(frame) > 1024 * 1024
                    await stream.write(frame)
                    got = {(await net.incoming.receive()).data for _ in big}
                    assert got == set(big)
                    assert net.stats()["penalties"] == {}

                    # a frame that claims 5 MiB: refused at its length prefix, scored, peer cut
                    await stream.write(encode_uvarint(5 * 1024 * 1024) + b"\x00" * 1024)
                    await _until(lambda: net.stats()["penalties"].get("oversize", 0) == 1, "the oversized frame scored")
                    assert net.stats()["dropped"].get("oversize_rpc") == 1
                    me = raw.get_id().to_base58()
                    await _until(lambda: me not in net.connected_peers(), "the sender disconnected")
                    await raw.close()
                await node.stop()

    trio.run(main)
