"""Four P2PNetwork nodes in one trio process on 127.0.0.1 (free ports): connecting from config
peers, mesh formation, gossip delivery on every topic exactly once, own-message filtering, size
limits, and reconnection after a node restarts with the same key and port."""

from __future__ import annotations

import trio

from agent_world_node.network import TOPIC_NAMES, ListenAddressInUseError, NetworkConfig, P2PNetwork
from agent_world_node.network.local_cluster import start_local_cluster, wait_for_full_mesh

SEEDS = [bytes([0x10 + i]) * 32 for i in range(4)]
RUN_LIMIT_S = 40


async def no_blocks(from_height: int, to_height: int) -> list[bytes]:
    return []


async def receive_exactly(net: P2PNetwork, expected: set[tuple[str, bytes, str]]) -> list[tuple[str, bytes, str]]:
    """Receive from ``net.incoming`` until every item of ``expected`` has arrived; return all
    received items (so duplicates and strays stay visible to the caller)."""
    got: list[tuple[str, bytes, str]] = []
    while not expected.issubset(got):
        msg = await net.incoming.receive()
        got.append((msg.topic, msg.data, msg.peer_id))
    return got


def test_four_nodes_mesh_and_deliver_every_topic_exactly_once() -> None:
    async def main() -> None:
        with trio.fail_after(RUN_LIMIT_S):
            async with trio.open_nursery() as nursery:
                handles = await start_local_cluster(nursery, SEEDS, no_blocks)
                nets = [h.network for h in handles]
                mesh_s = await wait_for_full_mesh(nets)
                print(f"measured: time to full mesh on all 5 topics = {mesh_s:.3f} s")
                ids = [n.peer_id for n in nets]
                for net in nets:
                    assert net.connected_peers() == sorted(i for i in ids if i != net.peer_id)

                for i, net in enumerate(nets):
                    for topic in TOPIC_NAMES:
                        await net.publish(topic, f"{topic} from node {i}".encode())
                # A second round on every topic acts as a barrier: a duplicate of round one would
                # have to overtake it, and the seen-cache makes that impossible unless delivery is broken.
                for i, net in enumerate(nets):
                    for topic in TOPIC_NAMES:
                        await net.publish(topic, f"{topic} barrier {i}".encode())

                for j, net in enumerate(nets):
                    arrived = {
                        (topic, f"{topic} {what} {i}".encode(), ids[i])
                        for i in range(len(nets)) if i != j
                        for topic in TOPIC_NAMES
                        for what in ("from node", "barrier")
                    }
                    # Only the latest queued status of a peer is kept (inbound.py): a node's first
                    # status may be replaced by its barrier status before it is taken.
                    maybe_coalesced = {m for m in arrived if m[0] == "status" and b"from node" in m[1]}
                    got = await receive_exactly(net, arrived - maybe_coalesced)
                    assert len(got) == len(set(got)) and set(got) <= arrived, "a message was duplicated or stray"
                    assert all(peer != net.peer_id for _, _, peer in got), "own message delivered back"
                    stats = net.stats()
                    assert stats["received"] == len(arrived)
                    assert stats["published"] == 2 * len(TOPIC_NAMES)
                    # Pubsub echoes our own publishes to our subscription; all of them were filtered.
                    assert stats["own_filtered"] == 2 * len(TOPIC_NAMES)
                    coalesced = stats["dropped"].get("status_coalesced", 0)
                    assert stats["dropped"] == ({"status_coalesced": coalesced} if coalesced else {})
                    assert len(got) + coalesced == len(arrived) and stats["incoming_queued"] == 0
                for h in handles:
                    await h.stop()

    trio.run(main)


def test_gossip_size_limit_and_bad_topic() -> None:
    async def main() -> None:
        with trio.fail_after(RUN_LIMIT_S):
            async with trio.open_nursery() as nursery:
                handles = await start_local_cluster(nursery, SEEDS[:2], no_blocks, max_gossip_bytes=200_000)
                a, b = (h.network for h in handles)
                await wait_for_full_mesh([a, b])
                try:
                    await a.publish("vote", b"x" * 200_001)
                except ValueError as exc:
                    assert "max_gossip_bytes" in str(exc)
                else:
                    raise AssertionError("oversize publish was accepted")
                try:
                    await a.publish("votes", b"x")
                except ValueError as exc:
                    assert "unknown topic" in str(exc)
                else:
                    raise AssertionError("unknown topic was accepted")
                exact = bytes(range(256)) * (200_000 // 256) + b"y" * (200_000 % 256)
                assert len(exact) == 200_000
                await a.publish("commit", exact)
                msg = await b.incoming.receive()
                assert (msg.topic, msg.data, msg.peer_id) == ("commit", exact, a.peer_id)
                assert a.stats()["published"] == 1
                for h in handles:
                    await h.stop()

    trio.run(main)


def test_full_actions_queue_drops_and_counts_without_blocking() -> None:
    async def main() -> None:
        with trio.fail_after(RUN_LIMIT_S):
            async with trio.open_nursery() as nursery:
                handles = await start_local_cluster(nursery, SEEDS[:2], no_blocks, actions_queue_size=4)
                a, b = (h.network for h in handles)
                await wait_for_full_mesh([a, b])
                sent = [f"batch {k}".encode() for k in range(12)]
                for data in sent:
                    await a.publish("actions", data)
                # b never reads while they arrive: each is enqueued (counted as received), and each
                # arrival at a full queue evicts the oldest one (counted as dropped).
                while b.stats()["received"] < 12:
                    await trio.sleep(0.02)
                stats = b.stats()
                assert stats["dropped"] == {"queue_full_actions": 8}
                assert stats["incoming_queued"] == 4
                kept = [b.incoming.receive_nowait().data for _ in range(4)]
                assert set(kept) <= set(sent) and len(set(kept)) == 4
                # The network still delivers after the overflow.
                await a.publish("actions", b"after overflow")
                msg = await b.incoming.receive()
                assert msg.data == b"after overflow"
                for h in handles:
                    await h.stop()

    trio.run(main)


def test_restarted_node_is_redialled_and_its_new_messages_are_delivered() -> None:
    async def main() -> None:
        with trio.fail_after(RUN_LIMIT_S):
            async with trio.open_nursery() as nursery:
                handles = await start_local_cluster(nursery, SEEDS, no_blocks, reconnect_interval_s=0.5)
                nets = [h.network for h in handles]
                await wait_for_full_mesh(nets)
                node0 = handles[0]
                old_id, old_address = node0.network.peer_id, node0.address

                # Several messages per second before the restart: with the library's seconds-based
                # seqno counter, the restarted node would reuse these message ids and every peer
                # would silently drop its new messages as already seen.
                before = [f"before {k}".encode() for k in range(8)]
                for data in before:
                    await node0.network.publish("vote", data)
                for net in nets[1:]:
                    await receive_exactly(net, {("vote", d, old_id) for d in before})

                failures_before = [n.stats()["dial_failures"] for n in nets[1:]]
                await node0.stop()
                reconnects_before = [n.stats()["reconnects"] for n in nets[1:]]
                # Wait until every other node has failed to redial node 0 at least once: that puts
                # node 0 in the library's 60 s negative dial cache on each of them.
                while any(n.stats()["dial_failures"] == f for n, f in zip(nets[1:], failures_before, strict=True)):
                    await trio.sleep(0.02)
                await node0.restart()  # same seed, same port; node 0 has no configured peers
                assert node0.network.peer_id == old_id and node0.address == old_address
                restarted = trio.current_time()
                # Nodes 1..3 have node 0 in their config: they must redial it (unblock_peer clears
                # the library's 60 s negative cache left by the failed dials while it was down).
                while sorted(node0.network.connected_peers()) != sorted(n.peer_id for n in nets[1:]):
                    await trio.sleep(0.02)
                connected_s = trio.current_time() - restarted
                nets = [h.network for h in handles]
                await wait_for_full_mesh(nets)
                meshed_s = trio.current_time() - restarted
                print(f"measured: restart -> reconnected {connected_s:.3f} s, -> full mesh {meshed_s:.3f} s")

                after = [f"after {k}".encode() for k in range(8)]
                for data in after:
                    await node0.network.publish("vote", data)
                for net in nets[1:]:
                    got = await receive_exactly(net, {("vote", d, old_id) for d in after})
                    assert len(got) == len(after)
                # Each of them counted node 0's return as a reconnect.
                while any(n.stats()["reconnects"] <= r for n, r in zip(nets[1:], reconnects_before, strict=True)):
                    await trio.sleep(0.02)
                # And the restarted node hears the others again.
                await nets[2].publish("status", b"hello again")
                msg = await node0.network.incoming.receive()
                assert (msg.topic, msg.data, msg.peer_id) == ("status", b"hello again", nets[2].peer_id)
                for h in handles:
                    await h.stop()

    trio.run(main)


def test_second_node_on_a_used_port_fails_clearly() -> None:
    async def main() -> None:
        with trio.fail_after(RUN_LIMIT_S):
            async with trio.open_nursery() as nursery:
                (first,) = await start_local_cluster(nursery, SEEDS[:1], no_blocks)
                port = first.address.split("/tcp/")[1].split("/")[0]
                second = P2PNetwork(
                    NetworkConfig(chain_id="local-test", listen_addr=f"/ip4/127.0.0.1/tcp/{port}", peers=[],
                                  key_seed=SEEDS[1]),
                    no_blocks,
                )
                try:
                    async with second.run():
                        raise AssertionError("a second node started on a port already in use")
                except ListenAddressInUseError as exc:
                    assert port in str(exc) and "in use" in str(exc)
                await first.stop()
                # Once the first node has stopped, the port is free again at once.
                again = P2PNetwork(
                    NetworkConfig(chain_id="local-test", listen_addr=f"/ip4/127.0.0.1/tcp/{port}", peers=[],
                                  key_seed=SEEDS[1]),
                    no_blocks,
                )
                async with again.run():
                    assert again.listen_addrs()[0].startswith(f"/ip4/127.0.0.1/tcp/{port}/p2p/")

    trio.run(main)


def test_a_disconnect_that_hangs_is_forced_by_closing_the_socket() -> None:
    """A graceful close to a frozen peer can block (its receive buffer is full); the network then
    closes the TCP socket itself, and the peer is not counted as reconnected meanwhile."""
    from agent_world_node.network.p2p import _tcp_socket_stream

    async def main() -> None:
        with trio.fail_after(RUN_LIMIT_S):
            async with trio.open_nursery() as nursery:
                handles = await start_local_cluster(nursery, SEEDS[:2], no_blocks, reconnect_interval_s=0.3)
                a, b = (h.network for h in handles)
                await wait_for_full_mesh([a, b])
                host = a._host
                conns = host.get_network().get_connections(b._id)
                assert conns and all(_tcp_socket_stream(c) is not None for c in conns), "layer walk broken"

                async def hang(peer_id):  # the graceful close never returns
                    await trio.sleep_forever()

                host.disconnect = hang
                reconnects = a.stats()["reconnects"]
                started = trio.current_time()
                await a._disconnect(b._id)
                assert b.peer_id not in a.connected_peers()
                assert a.stats()["dropped"]["forced_disconnect"] == 1
                assert a.stats()["reconnects"] == reconnects  # no false "reconnected" while closing
                forced_s = trio.current_time() - started
                # b notices the closed socket and a's reconnect loop dials b again
                while b.peer_id not in a.connected_peers() or a.peer_id not in b.connected_peers():
                    await trio.sleep(0.05)
                print(f"measured: forced disconnect in {forced_s:.2f} s, reconnected "
                      f"{trio.current_time() - started:.2f} s after the disconnect began")
                for h in handles:
                    await h.stop()

    trio.run(main)


def test_stopping_while_gossip_is_forwarded_never_asks_a_closed_socket_its_address() -> None:
    """Forwarding a message builds the host's signed peer record from its listen addresses. A
    network that stops closes its listeners while pubsub still runs; a lookup of the addresses in
    that window must not reach a socket already closed (EBADF crashed the pubsub service and the
    node's shutdown)."""

    async def main() -> None:
        with trio.fail_after(RUN_LIMIT_S):
            net = P2PNetwork(NetworkConfig(chain_id="stop", listen_addr="/ip4/127.0.0.1/tcp/0", peers=[], key_seed=SEEDS[0]),
                             no_blocks)
            stopped = trio.Event()
            lookups: list[int] = []

            async def look_up_addresses(host) -> None:  # what pubsub's forwarding does, every tick
                while not stopped.is_set():
                    lookups.append(len(host.get_addrs()))
                    await trio.sleep(0)

            async with trio.open_nursery() as nursery:
                async with net.run():
                    nursery.start_soon(look_up_addresses, net._host)
                    await trio.sleep(0.05)
                stopped.set()
            assert lookups and lookups[0] == 1, lookups[:3]  # it saw the listener while running

    trio.run(main)
