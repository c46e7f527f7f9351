"""Network-layer pieces that need no sockets: sync frame packing and checking, request checks,
config validation, topic names, mesh degrees, the incoming-queue drop policy, the libp2p log
bridge, the validation cache and the yamux setting."""

from __future__ import annotations

import logging
import os
import time

import pytest
import structlog
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_world_node.network import InboundMessage, NetworkConfig, NetworkConfigError, P2PNetwork, SyncError, peer_id_for_seed
from agent_world_node.network.host import gossip_degrees
from agent_world_node.network.log_bridge import install_libp2p_log_bridge
from agent_world_node.network.sync import (
    FRAME_OVERHEAD,
    SyncEnd,
    SyncPayloadPart,
    SyncPayloads,
    SyncRefused,
    SyncRequest,
    SyncResponseReader,
    SyncServer,
    encode_response_frames,
)
from agent_world_node.network.topics import TOPIC_NAMES, topic_id
from agent_world_runtime.codec import encode

SEED = b"\x07" * 32
OTHER_SEED = b"\x09" * 32


async def no_blocks(from_height: int, to_height: int) -> list[bytes]:
    return []


def config(**overrides: object) -> NetworkConfig:
    fields: dict[str, object] = dict(chain_id="unit", listen_addr="/ip4/127.0.0.1/tcp/0", peers=[], key_seed=SEED)
    fields.update(overrides)
    return NetworkConfig(**fields)  # type: ignore[arg-type]


# ---------------------------------------------------------------- sync frames


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=3000), max_size=30),
    max_frame=st.integers(min_value=FRAME_OVERHEAD + 6, max_value=2500),
)
def test_frames_respect_the_limit_and_reassemble_exactly(sizes: list[int], max_frame: int) -> None:
    payloads = [bytes([i % 251]) * n + i.to_bytes(2, "big") for i, n in enumerate(sizes)]
    frames = list(encode_response_frames(payloads, max_frame))
    assert all(len(f) <= max_frame for f in frames)
    reader = SyncResponseReader("peer", max_payloads=len(payloads), max_total_bytes=10**9)
    done = [reader.feed(f) for f in frames]
    assert done[-1] is True and not any(done[:-1])
    assert reader.payloads == payloads


def test_frames_pack_small_payloads_together() -> None:
    frames = list(encode_response_frames([b"a" * 100] * 10, 4096))
    assert len(frames) == 2  # one payloads frame + the end marker


def feed_all(reader: SyncResponseReader, frames: list[object]) -> None:
    for frame in frames:
        reader.feed(encode(frame))


def test_reader_rejects_protocol_violations() -> None:
    cases: list[tuple[list[object], str, dict[str, int]]] = [
        ([SyncPayloads(payloads=[b"a", b"b", b"c"])], "more than the 2 payloads", {}),
        ([SyncPayloads(payloads=[b"x" * 60])], "oversize response", {"max_total_bytes": 50}),
        ([SyncPayloads(payloads=[b"a"]), SyncEnd(count=2)], "end marker says 2", {}),
        ([SyncPayloadPart(data=b"a", last=False), SyncEnd(count=1)], "inside a split payload", {}),
        ([SyncPayloadPart(data=b"a", last=False), SyncPayloads(payloads=[b"b"])], "inside a split payload", {}),
        ([SyncEnd(count=0), SyncEnd(count=0)], "after the end marker", {}),
        ([SyncRefused(reason="busy")], "peer refused: busy", {}),
    ]
    for frames, reason, limits in cases:
        reader = SyncResponseReader("peer", max_payloads=2, max_total_bytes=limits.get("max_total_bytes", 10**6))
        with pytest.raises(SyncError, match=reason):
            feed_all(reader, frames)
    reader = SyncResponseReader("peer", max_payloads=2, max_total_bytes=100)
    with pytest.raises(SyncError, match="malformed response frame"):
        reader.feed(b"\xc1 not msgpack")
    with pytest.raises(SyncError, match="malformed response frame"):
        reader.feed(encode({"type": "payloads", "payloads": [1, 2]}))


def test_split_payload_is_reassembled() -> None:
    reader = SyncResponseReader("peer", max_payloads=2, max_total_bytes=100)
    feed_all(reader, [SyncPayloadPart(data=b"ab", last=False), SyncPayloadPart(data=b"cd", last=True),
                      SyncPayloads(payloads=[b"e"])])
    assert reader.feed(encode(SyncEnd(count=2))) is True
    assert reader.payloads == [b"abcd", b"e"]


def test_server_request_checks() -> None:
    server = SyncServer("unit", no_blocks, max_heights=10)
    assert server.check_request(SyncRequest(chain_id="unit", from_height=0, to_height=9)) is None
    assert server.check_request(SyncRequest(chain_id="other", from_height=0, to_height=1))[0] == "wrong_chain"
    assert server.check_request(SyncRequest(chain_id="unit", from_height=5, to_height=4))[0] == "bad_range"
    assert server.check_request(SyncRequest(chain_id="unit", from_height=-1, to_height=4))[0] == "bad_range"
    assert server.check_request(SyncRequest(chain_id="unit", from_height=0, to_height=10))[0] == "range_too_large"


def test_sync_request_wire_names() -> None:
    import msgspec

    raw = msgspec.msgpack.decode(encode(SyncRequest(chain_id="c", from_height=3, to_height=7)))
    assert raw == {"chain_id": "c", "from": 3, "to": 7}


# ---------------------------------------------------------------- config, topics, degrees


def test_config_validation_names_the_bad_setting() -> None:
    good_peer = f"/ip4/127.0.0.1/tcp/1234/p2p/{peer_id_for_seed(OTHER_SEED)}"
    config(peers=[good_peer]).validate()
    bad = [
        ({"chain_id": ""}, "chain_id"),
        ({"chain_id": "a/b"}, "chain_id"),
        ({"key_seed": b"short"}, "key_seed"),
        ({"listen_addr": "127.0.0.1:26656"}, "listen_addr"),
        ({"listen_addr": "/ip4/127.0.0.1/udp/1"}, "listen_addr"),
        ({"peers": ["/ip4/127.0.0.1/tcp/1234"]}, "/p2p/"),
        ({"peers": ["/ip4/127.0.0.1/tcp/1234/p2p/notapeerid"]}, "peer"),
        ({"max_gossip_bytes": 1_048_576}, "max_gossip_bytes"),
        ({"max_stream_message_bytes": 8 * 1024 * 1024}, "max_stream_message_bytes"),
        ({"dead_peer_timeout_s": 0}, "dead_peer_timeout_s"),
        ({"consensus_queue_size": 0}, "consensus_queue_size"),
        ({"actions_queue_size": 0}, "actions_queue_size"),
        ({"status_queue_peers": 0}, "status_queue_peers"),
        ({"topic_rate_limits": {"vote": (1.0, 1.0)}}, "topic_rate_limits"),
        ({"topic_rate_limits": {t: (1.0, 0.5) for t in TOPIC_NAMES}}, "topic_rate_limits"),
        ({"max_inbound_rpc_bytes": 1000}, "max_inbound_rpc_bytes"),
        ({"gossip_degree": 1}, "gossip_degree"),
    ]
    for overrides, word in bad:
        with pytest.raises(NetworkConfigError, match=word):
            config(**overrides).validate()


def test_peer_id_matches_the_node_key_derivation() -> None:
    net = P2PNetwork(config(), no_blocks)
    assert net.peer_id == peer_id_for_seed(SEED)


def test_own_address_and_duplicates_in_peers_are_skipped() -> None:
    me = f"/ip4/127.0.0.1/tcp/1/p2p/{peer_id_for_seed(SEED)}"
    other = f"/ip4/127.0.0.1/tcp/2/p2p/{peer_id_for_seed(OTHER_SEED)}"
    net = P2PNetwork(config(peers=[me, other, other]), no_blocks)
    assert [i.peer_id.to_base58() for i in net._peer_infos] == [peer_id_for_seed(OTHER_SEED)]


def test_topic_names_are_namespaced_by_chain() -> None:
    assert topic_id("chain-7", "vote") == "/agent-world/chain-7/vote/1"
    assert len({topic_id("a", t) for t in TOPIC_NAMES} | {topic_id("b", t) for t in TOPIC_NAMES}) == 10
    with pytest.raises(ValueError, match="unknown topic"):
        topic_id("a", "blocks")


def test_gossip_degrees() -> None:
    assert gossip_degrees(4) == (3, 2, 4)
    assert gossip_degrees(20) == (6, 4, 12)
    assert gossip_degrees(4, degree=5) == (5, 4, 6)


def test_publish_and_fetch_need_a_running_network() -> None:
    net = P2PNetwork(config(), no_blocks)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="not running"):
            await net.publish("vote", b"x")
        with pytest.raises(RuntimeError, match="not running"):
            await net.fetch_blocks(net.peer_id, 1, 2)
        assert net.connected_peers() == []

    trio.run(main)


# ---------------------------------------------------------------- incoming queue policy


def test_full_consensus_queue_drops_the_oldest_message() -> None:
    net = P2PNetwork(config(consensus_queue_size=3), no_blocks)
    for k in range(5):
        net._deliver(InboundMessage(topic="vote", data=bytes([k]), peer_id="p"))
    kept = [net.incoming.receive_nowait().data for _ in range(3)]
    assert kept == [b"\x02", b"\x03", b"\x04"]
    stats = net.stats()
    assert stats["dropped"] == {"queue_full_consensus": 2}
    assert stats["received"] == 5 and stats["received_by_topic"] == {"vote": 5}


def test_closed_consumer_is_counted_not_raised() -> None:
    net = P2PNetwork(config(), no_blocks)
    net.incoming.close()
    net._deliver(InboundMessage(topic="vote", data=b"x", peer_id="p"))
    assert net.stats()["dropped"] == {"consumer_closed": 1}


# ---------------------------------------------------------------- log bridge


def test_libp2p_warnings_reach_structlog_and_routine_errors_are_demoted() -> None:
    handler = install_libp2p_log_bridge()
    assert install_libp2p_log_bridge() is handler  # installed once
    saved = structlog.get_config()  # an earlier test may have left a WARNING filter (a CLI's quiet_logs)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as captured:
            logging.getLogger("libp2p.pubsub.pubsub").warning("fail to deliver message to subscription for topic %s", "t")
            logging.getLogger("libp2p.transport.tcp.tcp").error("Failed to open TCP stream: all attempts failed")
            logging.getLogger("libp2p.pubsub.pubsub").debug("not forwarded below WARNING")
    finally:
        structlog.configure(**saved)
    assert [(e["event"], e["log_level"], e["logger"]) for e in captured] == [
        ("libp2p_log", "warning", "libp2p.pubsub.pubsub"),
        ("libp2p_log", "debug", "libp2p.transport.tcp.tcp"),
    ]
    assert captured[0]["text"] == "fail to deliver message to subscription for topic t"


@pytest.mark.parametrize("logger, level, template", [
    # a peer subscribed to some topics only (libp2p/pubsub/gossipsub.py _prune_pending_messages)
    ("libp2p.pubsub.gossipsub", logging.WARNING,
     "pending message queue for peer %s exceeded limit (%d > %d), dropping oldest messages"),
    # the library's peer-record check (replaced by pubsub_patches, but other callers may log it)
    ("libp2p.pubsub.pubsub", logging.ERROR, "Received an invalid-signed-record, ignoring the incoming msg"),
    ("libp2p.pubsub.gossipsub", logging.ERROR, "Received an invalid-signed-record, ignoring the message"),
    ("libp2p.pubsub.pubsub", logging.WARNING, "Inbound pubsub RPC from peer %s exceeded size limit: %s"),
])
def test_a_flood_of_one_libp2p_warning_is_rate_limited_and_counted(logger: str, level: int, template: str) -> None:
    """Thousands of the same warning (or error) make BURST lines per window and one summary, not
    one line each."""
    from agent_world_node.network import log_bridge

    now = [0.0]
    handler = log_bridge.StructlogForwardingHandler(clock=lambda: now[0])
    args = tuple(["p", 1, 2][: template.count("%")])
    record = logging.LogRecord(logger, level, __file__, 1, template, args, None)
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as captured:
            for _ in range(1000):
                handler.emit(record)
            now[0] = log_bridge.WINDOW_S + 1
            handler.emit(record)
    finally:
        structlog.configure(**saved)
    events = [e["event"] for e in captured]
    assert events.count("libp2p_log") == log_bridge.BURST + 1
    [summary] = [e for e in captured if e["event"] == "libp2p_log_suppressed"]
    assert summary["count"] == 1000 - log_bridge.BURST and summary["logger"] == logger


def test_lru_validation_cache_evicts_least_recently_used_and_expires() -> None:
    from libp2p.pubsub.pubsub import ValidationResult

    from agent_world_node.network.pubsub_patches import LruValidationCache

    now = time.time()
    cache = LruValidationCache(ttl=300, max_size=3)
    for k in (b"a", b"b", b"c"):
        cache.put(k, ValidationResult(True, now))
    assert cache.get(b"a") is not None  # a becomes the most recently used
    cache.put(b"d", ValidationResult(False, now, "bad"))  # evicts b, the least recently used
    assert cache.get(b"b") is None
    assert [k for k in (b"a", b"c", b"d") if cache.get(k) is not None] == [b"a", b"c", b"d"]
    assert len(cache.cache) == 3
    cache.put(b"old", ValidationResult(True, now - 301))
    assert cache.get(b"old") is None and b"old" not in cache.cache  # expired on read
    cache.put(b"old", ValidationResult(True, now - 301))
    cache.clear_expired()
    assert list(cache.cache) == [b"c", b"d"]  # "old" evicted "a" (least recently used), then expired


def test_build_host_leaves_an_operators_yamux_setting_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from multiaddr import Multiaddr

    from agent_world_node.network.host import YAMUX_RELEASE_ON_READ_ENV, build_host

    monkeypatch.delenv(YAMUX_RELEASE_ON_READ_ENV, raising=False)
    build_host(create_new_key_pair(), Multiaddr("/ip4/127.0.0.1/tcp/0"))
    assert os.environ[YAMUX_RELEASE_ON_READ_ENV] == "0"
    monkeypatch.setenv(YAMUX_RELEASE_ON_READ_ENV, "1")
    build_host(create_new_key_pair(), Multiaddr("/ip4/127.0.0.1/tcp/0"))
    assert os.environ[YAMUX_RELEASE_ON_READ_ENV] == "1"


def test_lean_validate_msg_refuses_without_formatting_the_message_and_caches_the_verdict() -> None:
    from libp2p.exceptions import ValidationError
    from libp2p.pubsub.pb import rpc_pb2

    from agent_world_node.network.pubsub_patches import LruValidationCache, lean_validate_msg

    calls: list[bytes] = []

    class Validator:
        is_async = False

        @staticmethod
        def validator(forwarder: object, msg: rpc_pb2.Message) -> bool:
            calls.append(msg.seqno)
            return msg.data != b"bad" * 50_000

    class FakePubsub:
        validation_cache = LruValidationCache()
        validation_timeout = 1.0

        @staticmethod
        def _msg_id_constructor(msg: rpc_pb2.Message) -> bytes:
            return msg.seqno + msg.from_id

        @staticmethod
        def get_msg_validators(msg: rpc_pb2.Message) -> list:
            return [Validator]

    good = rpc_pb2.Message(from_id=b"peer", seqno=b"1", data=b"ok", topicIDs=["t"])
    bad = rpc_pb2.Message(from_id=b"peer", seqno=b"2", data=b"bad" * 50_000, topicIDs=["t"])
    pubsub = FakePubsub()

    async def check() -> None:
        await lean_validate_msg(pubsub, None, good)  # type: ignore[arg-type]
        for _ in range(2):
            with pytest.raises(ValidationError) as info:
                await lean_validate_msg(pubsub, None, bad)  # type: ignore[arg-type]
            assert len(str(info.value)) < 200 and "refused by a topic validator" in str(info.value)
        await lean_validate_msg(pubsub, None, good)  # type: ignore[arg-type]

    trio.run(check)
    assert calls == [b"1", b"2"]  # the second look at each message came from the cache


def test_dns_peer_addresses_are_resolved_at_each_dial() -> None:
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from multiaddr import Multiaddr

    from agent_world_node.network.config import parse_peer_addr
    from agent_world_node.network.p2p import resolve_dns

    pid = "12D3KooWDN7K2vo9rDBdpWGjDwMsQJaWvSqJxKZKg5ywyS42P8aq"
    named = info_from_p2p_addr(parse_peer_addr(f"/dns4/localhost/tcp/26656/p2p/{pid}"))
    missing = info_from_p2p_addr(parse_peer_addr(f"/dns4/no-such-host.invalid/tcp/1/p2p/{pid}"))

    async def main() -> None:
        assert (await resolve_dns(named)).addrs == [Multiaddr("/ip4/127.0.0.1/tcp/26656")]
        with pytest.raises(OSError, match="resolves"):
            await resolve_dns(missing)

    trio.run(main)
