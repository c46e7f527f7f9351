"""Network pieces that need no sockets: the per-class inbound queues (priority, fairness,
coalescing, bounds and drop counters), the per-topic rate limiter, the outbound RPC splitter, the
lenient peer-record check, and the ``[p2p]`` rate-limit settings."""

from __future__ import annotations

import pytest
import trio
from libp2p.peer.envelope import seal_record
from libp2p.peer.id import ID
from libp2p.peer.peer_record import PeerRecord
from libp2p.peer.peerstore import PeerStore
from libp2p.pubsub.pb import rpc_pb2
from libp2p.utils.varint import decode_varint_with_size
from multiaddr import Multiaddr

from agent_world_node import config as cfg
from agent_world_node.network import InboundMessage, NetworkConfig
from agent_world_node.network.config import OUTBOUND_RPC_LIMIT
from agent_world_node.network.host import _split_oversize_rpcs, key_pair_from_seed
from agent_world_node.network.inbound import InboundQueues, message_class
from agent_world_node.network.peer_filter import TopicRateLimiter
from agent_world_node.network.pubsub_patches import consume_signed_record_leniently, install_pubsub_patches


def msg(topic: str, data: bytes = b"", peer: str = "p") -> InboundMessage:
    return InboundMessage(topic=topic, data=data, peer_id=peer)


def drain(q: InboundQueues) -> list[InboundMessage]:
    out = []
    while True:
        try:
            out.append(q.receive_nowait())
        except trio.WouldBlock:
            return out


# ---------------------------------------------------------------- inbound queues


def test_consensus_is_taken_before_anything_queued_earlier() -> None:
    q = InboundQueues(100, 100, 100)
    for k in range(5):
        q.put(msg("status", bytes([k]), peer=f"s{k}"))
        q.put(msg("actions", bytes([k])))
    q.put(msg("vote", b"v"))
    q.put(msg("proposal", b"p"))
    q.put(msg("commit", b"c"))
    taken = drain(q)
    assert [m.topic for m in taken[:3]] == ["vote", "proposal", "commit"]
    assert len(taken) == 13 and len(q) == 0


def test_actions_and_status_take_turns() -> None:
    q = InboundQueues(100, 100, 100)
    for k in range(3):
        q.put(msg("actions", bytes([k])))
    for k in range(3):
        q.put(msg("status", bytes([k]), peer=f"s{k}"))
    q.put(msg("actions", b"\x03"))
    assert [m.topic for m in drain(q)] == ["actions", "status", "actions", "status", "actions", "status", "actions"]


def test_a_consensus_message_arriving_mid_drain_goes_next() -> None:
    q = InboundQueues(100, 100, 100)
    q.put(msg("actions", b"a0"))
    q.put(msg("actions", b"a1"))
    assert q.receive_nowait().data == b"a0"
    q.put(msg("vote", b"v"))
    assert q.receive_nowait().data == b"v"
    assert q.receive_nowait().data == b"a1"


def test_status_keeps_only_the_latest_message_of_each_peer() -> None:
    dropped: dict[str, int] = {}
    q = InboundQueues(10, 10, 10, dropped=dropped)
    for k in range(500):  # a flood from one peer
        q.put(msg("status", k.to_bytes(2, "big"), peer="flooder"))
    q.put(msg("status", b"honest", peer="honest"))
    assert q.queued() == {"consensus": 0, "actions": 0, "status": 2}
    assert [(m.peer_id, m.data) for m in drain(q)] == [("flooder", (499).to_bytes(2, "big")), ("honest", b"honest")]
    assert dropped == {"status_coalesced": 499}


def test_status_of_too_many_peers_drops_the_oldest_peer() -> None:
    dropped: dict[str, int] = {}
    q = InboundQueues(10, 10, 3, dropped=dropped)
    for k in range(5):
        q.put(msg("status", b"x", peer=f"p{k}"))
    assert [m.peer_id for m in drain(q)] == ["p2", "p3", "p4"]
    assert dropped == {"queue_full_status": 2}


@pytest.mark.parametrize("topic, kind", [("vote", "consensus"), ("actions", "actions")])
def test_full_fifo_drops_its_oldest_and_counts_by_class(topic: str, kind: str) -> None:
    dropped: dict[str, int] = {}
    q = InboundQueues(3, 3, 3, dropped=dropped)
    for k in range(7):
        q.put(msg(topic, bytes([k])))
    q.put(msg("status", b"s"))
    assert [m.data for m in drain(q) if m.topic == topic] == [b"\x04", b"\x05", b"\x06"]
    assert dropped == {f"queue_full_{kind}": 4}


def test_a_consensus_flood_from_one_origin_delays_only_that_origin() -> None:
    """Origins are served round-robin: an honest validator's vote queued behind a flooder's 100
    stale votes comes second, and when the queue is full the flooder's oldest is dropped."""
    dropped: dict[str, int] = {}
    q = InboundQueues(50, 5, 5, dropped=dropped)
    for k in range(100):
        q.put(msg("vote", bytes([k]), peer="flooder"))
    q.put(msg("vote", b"honest", peer="validator"))
    q.put(msg("proposal", b"proposal", peer="validator"))
    taken = drain(q)
    assert [m.data for m in taken[:4]] == [bytes([52]), b"honest", bytes([53]), b"proposal"]
    assert len(taken) == 50 and dropped == {"queue_full_consensus": 52}
    assert [m.data for m in taken if m.peer_id == "flooder"] == [bytes([k]) for k in range(52, 100)]


def test_a_full_actions_queue_never_costs_a_consensus_message() -> None:
    dropped: dict[str, int] = {}
    q = InboundQueues(5, 2, 2, dropped=dropped)
    q.put(msg("vote", b"v"))
    for k in range(50):
        q.put(msg("actions", bytes([k])))
    assert q.receive_nowait().data == b"v"
    assert dropped == {"queue_full_actions": 48}


def test_receive_waits_for_a_message_and_ends_after_close() -> None:
    q = InboundQueues(10, 10, 10)

    async def main() -> None:
        got: list[bytes] = []

        async def consume() -> None:
            async for m in q:
                got.append(m.data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.sleep(0.01)
            q.put(msg("vote", b"1"))
            await trio.sleep(0.01)
            q.put(msg("status", b"2"))
            q.close()
        assert got == [b"1", b"2"]
        with pytest.raises(trio.ClosedResourceError):
            q.put(msg("vote", b"late"))

    trio.run(main)


def test_unknown_topic_and_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        message_class("blocks")
    with pytest.raises(ValueError):
        InboundQueues(0, 1, 1)


# ---------------------------------------------------------------- per-topic rate limits


def test_topic_rate_limits_are_per_origin_and_per_topic() -> None:
    now = [0.0]
    r = TopicRateLimiter({"status": (5.0, 20.0), "vote": (50.0, 200.0)}, clock=lambda: now[0])
    assert [r.allow("flooder", "status") for _ in range(25)] == [True] * 20 + [False] * 5
    assert r.allow("flooder", "vote")  # its votes are limited separately
    assert r.allow("honest", "status")  # other origins are not affected
    now[0] = 1.0  # five tokens back per second
    assert [r.allow("flooder", "status") for _ in range(6)] == [True] * 5 + [False]
    assert r.allow("anyone", "commit")  # a topic without a limit


def test_an_honest_status_heartbeat_is_never_limited() -> None:
    now = [0.0]
    r = TopicRateLimiter(cfg.DEFAULT_TOPIC_RATE_LIMITS, clock=lambda: now[0])
    for second in range(600):
        now[0] = float(second)
        assert r.allow("honest", "status")


def test_p2p_config_carries_the_topic_limits_and_still_loads_the_old_keys(tmp_path) -> None:
    path = tmp_path / "config.toml"
    config = cfg.NodeConfig()
    config.p2p.status_rate_limit = 7.0
    cfg.write_config(path, config)
    assert "peer_rate_limit" not in path.read_text()  # unset: not written
    limits = cfg.read_config(path).p2p.topic_rate_limits()
    assert limits == {**cfg.DEFAULT_TOPIC_RATE_LIMITS, "status": (7.0, 20.0)}
    NetworkConfig("c", "/ip4/127.0.0.1/tcp/0", [], b"\x01" * 32, topic_rate_limits=limits).validate()
    # a config.toml written before the per-topic limits still loads (the old keys are ignored)
    path.write_text(path.read_text().replace("[p2p]\n", "[p2p]\npeer_rate_limit = 150.0\npeer_rate_burst = 300.0\n"))
    assert cfg.read_config(path).p2p.peer_rate_limit == 150.0


# ---------------------------------------------------------------- outbound RPC splitting


class _FakeStream:
    class _Conn:
        peer_id = ID.from_pubkey(key_pair_from_seed(b"\x02" * 32).public_key)

    muxed_conn = _Conn()

    def __init__(self) -> None:
        self.frames: list[bytes] = []


class _FakePubsub:
    """What ``_split_oversize_rpcs`` wraps: ``write_msg`` writing one varint-prefixed frame."""

    async def write_msg(self, stream: _FakeStream, rpc: rpc_pb2.RPC) -> bool:
        from libp2p.utils.varint import encode_varint_prefixed

        stream.frames.append(encode_varint_prefixed(rpc.SerializeToString()))
        return True


def _rpc_with(*sizes: int) -> rpc_pb2.RPC:
    rpc = rpc_pb2.RPC(senderRecord=b"r" * 200)
    for k, size in enumerate(sizes):
        rpc.publish.append(rpc_pb2.Message(data=bytes([k]) * size, topicIDs=["/t"], from_id=b"f", seqno=bytes([k])))
    return rpc


def test_an_rpc_of_two_900kb_messages_leaves_as_two_frames_under_1_mib() -> None:
    pubsub = _FakePubsub()
    _split_oversize_rpcs(pubsub)  # type: ignore[arg-type]
    stream = _FakeStream()
    assert trio.run(pubsub.write_msg, stream, _rpc_with(900_000, 900_000, 100))
    assert len(stream.frames) == 2
    datas = []
    for frame in stream.frames:
        length, prefix = decode_varint_with_size(frame)
        assert length <= OUTBOUND_RPC_LIMIT and len(frame) == prefix + length
        rpc = rpc_pb2.RPC()
        rpc.ParseFromString(frame[prefix:])
        datas.extend(m.data for m in rpc.publish)
    assert [len(d) for d in datas] == [900_000, 900_000, 100]
    # a small RPC is written untouched, as one frame
    stream.frames.clear()
    assert trio.run(pubsub.write_msg, stream, _rpc_with(10, 10))
    assert len(stream.frames) == 1


# ---------------------------------------------------------------- signed peer records


def _record_rpc(seed: bytes, seq: int) -> tuple[rpc_pb2.RPC, ID]:
    keys = key_pair_from_seed(seed)
    peer = ID.from_pubkey(keys.public_key)
    envelope = seal_record(PeerRecord(peer, [Multiaddr("/ip4/127.0.0.1/tcp/1")], seq), keys.private_key)
    return rpc_pb2.RPC(senderRecord=envelope.marshal_envelope()), peer


class _Host:
    def __init__(self) -> None:
        self.peerstore = PeerStore()

    def get_peerstore(self) -> PeerStore:
        return self.peerstore


def test_a_peer_record_whose_seq_went_back_is_accepted_from_that_peer() -> None:
    host = _Host()
    newer, peer = _record_rpc(b"\x05" * 32, seq=2_000)
    older, _ = _record_rpc(b"\x05" * 32, seq=1_000)
    assert consume_signed_record_leniently(newer, host, peer)
    assert consume_signed_record_leniently(older, host, peer)  # the library's check says False
    assert host.peerstore.peer_record_map[peer].seq == 1_000
    # a record of another peer, or garbage, is ignored and never drops the RPC
    other, _ = _record_rpc(b"\x06" * 32, seq=5_000)
    assert consume_signed_record_leniently(other, host, peer)
    assert host.peerstore.peer_record_map[peer].seq == 1_000
    assert consume_signed_record_leniently(rpc_pb2.RPC(senderRecord=b"garbage"), host, peer)


def test_the_library_check_is_replaced_everywhere_it_is_called() -> None:
    import libp2p.pubsub.floodsub
    import libp2p.pubsub.gossipsub
    import libp2p.pubsub.pubsub

    install_pubsub_patches()
    install_pubsub_patches()  # idempotent
    for module in (libp2p.pubsub.pubsub, libp2p.pubsub.gossipsub, libp2p.pubsub.floodsub):
        assert module.maybe_consume_signed_record is consume_signed_record_leniently
