"""Block sync over ``/agent-world/sync/1.0.0`` between real P2PNetwork nodes on 127.0.0.1:
what the handler served arrives intact and in order (also across many 4 MiB frames and for one
payload larger than a frame), and every failure is a ``SyncError`` with a reason while the
serving node stays healthy."""

from __future__ import annotations

import hashlib

import trio

from agent_world_node.network import P2PNetwork, SyncError
from agent_world_node.network.config import NetworkConfig
from agent_world_node.network.local_cluster import NetworkHandle, start_local_cluster
from agent_world_node.network.sync import SYNC_PROTOCOL_ID

SEEDS = [bytes([0x30 + i]) * 32 for i in range(3)]
RUN_LIMIT_S = 40
STORE_TOP = 40  # the serving node has heights 1..STORE_TOP
BIG_SIZE = 256 * 1024


def payload_for(height: int, size: int = 300) -> bytes:
    """Deterministic, height-specific bytes (distinct for every height and size)."""
    seed = hashlib.sha256(f"{height}/{size}".encode()).digest()
    return (seed * (size // 32 + 1))[:size]


class Store:
    """A fake block store: ``sizes[h]`` is the payload size at height ``h`` (default 300 B)."""

    def __init__(self) -> None:
        self.sizes: dict[int, int] = {}
        self.calls: list[tuple[int, int]] = []
        self.fail = False
        self.release = trio.Event()
        self.block = False

    async def handler(self, from_height: int, to_height: int) -> list[bytes]:
        self.calls.append((from_height, to_height))
        if self.block:
            await self.release.wait()
        if self.fail:
            raise RuntimeError("disk on fire")
        top = min(to_height, STORE_TOP)
        return [payload_for(h, self.sizes.get(h, 300)) for h in range(from_height, top + 1)]


async def wait_connected(net: P2PNetwork, peer: str) -> None:
    while peer not in net.connected_peers():
        await trio.sleep(0.02)


async def expect_sync_error(net: P2PNetwork, peer: str, lo: int, hi: int, *, timeout_s: float = 10) -> SyncError:
    try:
        await net.fetch_blocks(peer, lo, hi, timeout_s=timeout_s)
    except SyncError as exc:
        assert exc.peer_id == peer
        return exc
    raise AssertionError("fetch_blocks did not raise SyncError")


def test_fetch_returns_what_the_handler_served_in_height_order() -> None:
    async def main() -> None:
        store = Store()
        with trio.fail_after(RUN_LIMIT_S):
            async with trio.open_nursery() as nursery:
                a, b = await start_local_cluster(nursery, SEEDS[:2], store.handler)
                got = await b.network.fetch_blocks(a.network.peer_id, 3, 9)
                assert got == [payload_for(h) for h in range(3, 10)]
                # The store has fewer heights than asked: the peer returns what it has.
                got = await b.network.fetch_blocks(a.network.peer_id, STORE_TOP - 1, STORE_TOP + 20)
                assert got == [payload_for(STORE_TOP - 1), payload_for(STORE_TOP)]
                got = await b.network.fetch_blocks(a.network.peer_id, STORE_TOP + 1, STORE_TOP + 5)
                assert got == []
                # Sync works in both directions (b's store is the same fake).
                got = await a.network.fetch_blocks(b.network.peer_id, 1, 1)
                assert got == [payload_for(1)]
                assert a.network.stats()["sync_requests_served"] == 3
                assert b.network.stats()["sync_fetches"] == 3
                for h in (a, b):
                    await h.stop()

    trio.run(main)


def test_large_response_crosses_many_frames_and_a_payload_larger_than_a_frame() -> None:
    async def main() -> None:
        store = Store()
        for h in range(1, 25):  # 24 x 256 KiB = 6 MiB: more than one 4 MiB frame
            store.sizes[h] = BIG_SIZE
        store.sizes[30] = 5 * 1024 * 1024  # one payload larger than a 4 MiB frame: sent in parts
        with trio.fail_after(RUN_LIMIT_S):
            async with trio.open_nursery() as nursery:
                a, b = await start_local_cluster(nursery, SEEDS[:2], store.handler)
                got = await b.network.fetch_blocks(a.network.peer_id, 1, 24)
                assert got == [payload_for(h, BIG_SIZE) for h in range(1, 25)]
                sent = a.network.stats()["sync_bytes_sent"]
                assert sent > 6 * 1024 * 1024 > a.network.config.max_stream_message_bytes

                got = await b.network.fetch_blocks(a.network.peer_id, 29, 31)
                assert got == [payload_for(29), payload_for(30, 5 * 1024 * 1024), payload_for(31)]
                for h in (a, b):
                    await h.stop()

    trio.run(main)


def test_refusals_and_failures_are_sync_errors_and_the_server_survives() -> None:
    async def main() -> None:
        store = Store()
        with trio.fail_after(RUN_LIMIT_S):
            async with trio.open_nursery() as nursery:
                a, b, c = await start_local_cluster(nursery, SEEDS, store.handler)
                server, client = a.network, b.network
                sid = server.peer_id

                # Client-side argument errors are the caller's bug: ValueError.
                for lo, hi in ((5, 4), (-1, 3), (1, 501)):
                    try:
                        await client.fetch_blocks(sid, lo, hi)
                    except ValueError:
                        pass
                    else:
                        raise AssertionError(f"range {lo}..{hi} was accepted")

                # A server with a smaller range limit refuses with its reason.
                small = await NetworkHandle.start(
                    nursery,
                    NetworkConfig(chain_id="local-test", listen_addr="/ip4/127.0.0.1/tcp/0",
                                  peers=[b.address], key_seed=b"\x41" * 32, max_sync_heights=10,
                                  max_concurrent_sync_serves=1),
                    store.handler,
                )
                await wait_connected(client, small.network.peer_id)
                exc = await expect_sync_error(client, small.network.peer_id, 1, 11)
                assert "refused" in exc.reason and "limit of 10" in exc.reason

                # That server serves one request at a time: a second one meanwhile is refused as busy.
                store.block, store.release = True, trio.Event()
                first: list[object] = []

                async def first_fetch() -> None:
                    first.append(await client.fetch_blocks(small.network.peer_id, 1, 2))

                calls = len(store.calls)
                nursery.start_soon(first_fetch)
                while len(store.calls) == calls:  # the first request is inside the handler
                    await trio.sleep(0.02)
                exc = await expect_sync_error(client, small.network.peer_id, 3, 4)
                assert "busy" in exc.reason
                store.block = False
                store.release.set()
                while not first:
                    await trio.sleep(0.02)
                assert first == [[payload_for(1), payload_for(2)]]

                # A node of another chain refuses to serve this one.
                other = await NetworkHandle.start(
                    nursery,
                    NetworkConfig(chain_id="other-chain", listen_addr="/ip4/127.0.0.1/tcp/0",
                                  peers=[b.address], key_seed=b"\x42" * 32),
                    store.handler,
                )
                await wait_connected(client, other.network.peer_id)
                exc = await expect_sync_error(client, other.network.peer_id, 1, 2)
                assert "chain id mismatch" in exc.reason

                # The store failing is an internal error, not a crash.
                store.fail = True
                exc = await expect_sync_error(client, sid, 1, 2)
                assert "internal error" in exc.reason
                store.fail = False

                # A slow server: the whole exchange is bounded by timeout_s.
                store.block, store.release = True, trio.Event()
                exc = await expect_sync_error(client, sid, 1, 2, timeout_s=0.5)
                assert "timed out" in exc.reason
                store.block = False
                store.release.set()

                # Garbage on the sync protocol: the server answers with a refusal and keeps serving.
                stream = await client._host.new_stream(server._id, [SYNC_PROTOCOL_ID])  # raw access to send garbage
                await stream.write(b"\x05hello")
                reply = await stream.read(4096)
                assert b"refused" in reply and b"malformed" in reply
                await stream.close()
                assert server.stats()["sync_requests_refused"].get("malformed", 0) == 1

                # A peer that is gone.
                gone = c.network.peer_id
                await c.stop()
                exc = await expect_sync_error(client, gone, 1, 2)
                assert exc.reason
                # A peer id never seen (no address known).
                unknown = P2PNetwork(
                    NetworkConfig(chain_id="x", listen_addr="/ip4/127.0.0.1/tcp/0", peers=[], key_seed=b"\x43" * 32),
                    store.handler,
                ).peer_id
                await expect_sync_error(client, unknown, 1, 2)

                # After all of that the server still serves normally.
                got = await client.fetch_blocks(sid, 1, 3)
                assert got == [payload_for(h) for h in (1, 2, 3)]
                stats = client.stats()
                assert stats["sync_fetch_failures"] == 7 and stats["sync_fetches"] == 2
                for h in (a, b, small, other):
                    await h.stop()

    trio.run(main)
