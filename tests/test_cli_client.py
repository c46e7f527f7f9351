"""NodeClient / SyncNodeClient: request shapes and the mapping of node answers to results and errors
(httpx.MockTransport, no sockets except the one unreachable-port test)."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
import trio
import trio.testing

from agent_world_client.client import (
    ActionRejected,
    AgentKey,
    AgentKeyError,
    BadResponse,
    NodeBusy,
    NodeClient,
    NodeUnreachable,
    NotFound,
    SyncNodeClient,
    normalize_base_url,
    retry_wait_s,
)
from agent_world_node.config import read_key
from agent_world_runtime.actions import MoveAgent, decode_signed_action_json, sign_action, verify_action_signature
from agent_world_runtime.crypto import SigningKey

KEY = SigningKey(bytes(range(32)))
SIGNED = sign_action(KEY, "test-chain", "alice", 3, MoveAgent(to=(1, 2, 0)))


def run_async(fn, *args):
    return trio.run(fn, *args)


def client_with(handler, **kwargs) -> NodeClient:
    return NodeClient("http://node.test:1234", transport=httpx.MockTransport(handler), **kwargs)


def test_submit_posts_the_msgspec_json_of_the_signed_action():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"status": "accepted", "action_id": "ab" * 32})

    async def go():
        async with client_with(handler) as c:
            return await c.submit(SIGNED)

    result = run_async(go)
    assert result.status == "accepted" and result.action_id == "ab" * 32 and result.retries == 0
    (request,) = seen
    assert request.method == "POST" and request.url.path == "/v1/actions"
    assert request.headers["content-type"] == "application/json"
    decoded = decode_signed_action_json(request.content)
    assert decoded == SIGNED
    assert verify_action_signature(decoded, KEY.public_key)


def test_duplicate_is_a_result_not_an_error():
    def handler(request):
        return httpx.Response(200, json={"status": "duplicate", "action_id": "cd" * 32})

    result = SyncNodeClient("http://x", transport=httpx.MockTransport(handler)).submit(SIGNED)
    assert result.status == "duplicate"


@pytest.mark.parametrize("status", [400, 413, 422])
def test_rejection_raises_action_rejected_with_code_and_reason(status):
    def handler(request):
        return httpx.Response(status, json={"error": "nonce 3 already used; use 4", "code": "nonce_replayed"})

    with pytest.raises(ActionRejected) as info:
        SyncNodeClient("http://x", transport=httpx.MockTransport(handler)).submit(SIGNED)
    assert info.value.code == "nonce_replayed"
    assert info.value.reason == "nonce 3 already used; use 4"
    assert info.value.status == status
    assert "nonce_replayed" in str(info.value)


def test_rejection_without_json_body_still_has_a_code():
    def handler(request):
        return httpx.Response(400, text="bad request")

    with pytest.raises(ActionRejected) as info:
        SyncNodeClient("http://x", transport=httpx.MockTransport(handler)).submit(SIGNED)
    assert info.value.code == "rejected" and "bad request" in info.value.reason


def test_503_is_retried_following_the_hint_then_succeeds():
    answers = iter(
        [
            httpx.Response(503, json={"error": "mempool full", "retry_after_ms": 20}, headers={"Retry-After": "1"}),
            httpx.Response(503, json={"error": "mempool full", "retry_after_ms": 20}, headers={"Retry-After": "1"}),
            httpx.Response(202, json={"status": "accepted", "action_id": "ef" * 32}),
        ]
    )
    calls = []

    def handler(request):
        calls.append(trio.current_time())
        return next(answers)

    async def go():
        async with client_with(handler) as c:
            return await c.submit(SIGNED)

    result = trio.run(go, clock=trio.testing.MockClock(autojump_threshold=0))
    assert result.retries == 2 and result.status == "accepted"
    # The client slept the body's retry_after_ms (20 ms, virtual clock) between attempts, not the header's 1 s.
    assert calls[1] - calls[0] == pytest.approx(0.020)
    assert calls[2] - calls[1] == pytest.approx(0.020)


def test_503_forever_gives_up_after_the_bound():
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(503, json={"error": "mempool full"}, headers={"Retry-After": "2"})

    async def go():
        async with client_with(handler, max_503_retries=3, max_retry_wait_s=0.5) as c:
            await c.submit(SIGNED)

    with pytest.raises(NodeBusy) as info:
        trio.run(go, clock=trio.testing.MockClock(autojump_threshold=0))
    assert info.value.retries == 3
    assert len(calls) == 4
    assert "mempool full" in str(info.value)


def test_retry_wait_prefers_body_then_header_and_is_clamped():
    r = httpx.Response(503, headers={"Retry-After": "3"})
    assert retry_wait_s(r, {"retry_after_ms": 250}, default_s=0.5, max_s=5) == 0.25
    assert retry_wait_s(r, {}, default_s=0.5, max_s=5) == 3.0
    assert retry_wait_s(r, {}, default_s=0.5, max_s=2) == 2.0
    assert retry_wait_s(httpx.Response(503), None, default_s=0.5, max_s=5) == 0.5
    assert retry_wait_s(httpx.Response(503, headers={"Retry-After": "soon"}), None, default_s=0.7, max_s=5) == 0.7
    assert retry_wait_s(httpx.Response(503), {"retry_after_ms": -5}, default_s=0.5, max_s=5) == 0.0


def test_connection_refused_says_where_and_asks_if_running():
    def handler(request):
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(NodeUnreachable) as info:
        SyncNodeClient("http://10.9.8.7:4444", transport=httpx.MockTransport(handler)).status()
    message = str(info.value)
    assert "cannot reach node at http://10.9.8.7:4444" in message and "is it running?" in message


def test_timeout_is_reported_as_unreachable_with_the_limit():
    def handler(request):
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(NodeUnreachable) as info:
        SyncNodeClient("http://x", timeout_s=2.5, transport=httpx.MockTransport(handler)).status()
    assert "within 2.5 s" in str(info.value)


def test_real_closed_port_is_unreachable():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(NodeUnreachable) as info:
        SyncNodeClient(f"127.0.0.1:{port}", timeout_s=5).status()
    assert f"http://127.0.0.1:{port}" in str(info.value)


def test_404_maps_to_not_found_and_other_statuses_to_bad_response():
    def handler(request):
        if request.url.path == "/v1/agents/bob":
            return httpx.Response(404, json={"error": "no agent 'bob'", "code": "unknown_agent"})
        if request.url.path == "/v1/blocks/7":
            return httpx.Response(500, text="Internal Server Error")
        if request.url.path == "/v1/status":
            return httpx.Response(200, text="<html>not json</html>")
        return httpx.Response(418)

    c = SyncNodeClient("http://x", transport=httpx.MockTransport(handler))
    with pytest.raises(NotFound) as nf:
        c.agent("bob")
    assert "no agent 'bob'" in str(nf.value)
    with pytest.raises(BadResponse) as br:
        c.block(7)
    assert br.value.status == 500 and "HTTP 500" in str(br.value)
    with pytest.raises(BadResponse) as nj:
        c.status()
    assert "not JSON" in str(nj.value)


def test_get_endpoints_use_the_documented_paths_and_params():
    seen = []

    def handler(request):
        seen.append((request.url.path, dict(request.url.params)))
        path = request.url.path
        if path == "/v1/events":
            return httpx.Response(200, json={"events": [{"seq": 5, "height": 2, "kind": "domain.x", "data": {}}]})
        if path == "/v1/modules":
            return httpx.Response(200, json={"artifacts": []})
        return httpx.Response(200, json={"path": path})

    c = SyncNodeClient("http://x/", transport=httpx.MockTransport(handler))
    assert c.status() == {"path": "/v1/status"}
    assert c.block(3) == {"path": "/v1/blocks/3"}
    assert c.execution(4) == {"path": "/v1/execution/4"}
    assert c.agent("alice") == {"path": "/v1/agents/alice"}
    assert c.events(from_seq=5, limit=10, kind="domain.") == [{"seq": 5, "height": 2, "kind": "domain.x", "data": {}}]
    assert c.modules() == {"artifacts": [], "instances": []}
    assert ("/v1/events", {"limit": "10", "order": "asc", "kind": "domain.", "cursor": "5"}) in seen


def test_accepted_without_action_id_is_a_bad_response():
    def handler(request):
        return httpx.Response(202, json={"status": "accepted"})

    with pytest.raises(BadResponse):
        SyncNodeClient("http://x", transport=httpx.MockTransport(handler)).submit(SIGNED)


def test_normalize_base_url():
    assert normalize_base_url("127.0.0.1:26657") == "http://127.0.0.1:26657"
    assert normalize_base_url(" https://n.example/ ") == "https://n.example"
    with pytest.raises(Exception, match="empty node URL"):
        normalize_base_url("  ")


def test_agent_key_file_roundtrip_and_compatibility_with_read_key(tmp_path):
    path = tmp_path / "alice.json"
    key = SigningKey.generate()
    AgentKey(key=key, agent_id="alice").save(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    loaded = AgentKey.load(path)
    assert loaded.agent_id == "alice" and loaded.key.seed == key.seed
    assert read_key(path).seed == key.seed
    with pytest.raises(AgentKeyError, match="already exists"):
        AgentKey(key=SigningKey.generate(), agent_id="alice").save(path)
    assert AgentKey.load(path).key.seed == key.seed


def test_agent_key_load_errors_name_the_file(tmp_path):
    with pytest.raises(AgentKeyError, match="not found"):
        AgentKey.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AgentKeyError, match="bad.json"):
        AgentKey.load(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"seed": "00" * 32, "public_key": "11" * 32}))
    with pytest.raises(AgentKeyError, match="does not match"):
        AgentKey.load(wrong)
    with pytest.raises(AgentKeyError, match="invalid agent id"):
        AgentKey(key=KEY, agent_id="Not Valid").save(tmp_path / "x.json")
