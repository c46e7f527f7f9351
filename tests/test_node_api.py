"""The HTTP API of a real (single-validator, in-process) node: admission errors and read routes."""

from __future__ import annotations

import httpx
import pytest
import trio

from agent_world_runtime.actions import MoveAgent, sign_action
from agent_world_runtime.codec import encode_json
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.signer import AgentSigner

from .node_harness import bank_signer, running_node, single_validator_home

CHAIN = "api-test"


async def _wait_for(predicate, what: str, timeout_s: float = 20.0):
    with trio.fail_after(timeout_s):
        while True:
            value = await predicate()
            if value:
                return value
            await trio.sleep(0.1)


def _post(client, signed):
    return client.post("/v1/actions", content=encode_json(signed), headers={"content-type": "application/json"})


def test_admission_errors_and_read_routes(tmp_path):
    home = single_validator_home(tmp_path / "solo", chain_id=CHAIN)

    async def main():
        async with running_node(home) as node:
            base = f"http://{node.config.rpc.listen}"
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                alice = SigningKey(b"a" * 32)
                mallory = SigningKey(b"m" * 32)

                # malformed bodies: 400 with what was wrong
                r = await client.post("/v1/actions", content=b"{not json")
                assert r.status_code == 400 and r.json()["code"] == "malformed"
                r = await client.post("/v1/actions", content=b'{"body": {"chain_id": 1}, "signature": ""}')
                assert r.status_code == 400 and "SignedAction" in r.json()["error"]
                r = await client.post("/v1/actions", content=b"x" * (600 * 1024))
                assert r.status_code == 413 and r.json()["code"] == "too_large"

                # unknown agent (told how agents come to exist), wrong chain, bad signature
                r = await _post(client, sign_action(alice, CHAIN, "alice", 1, MoveAgent(to=(1, 0, 0))))
                assert r.status_code == 400 and r.json()["code"] == "unknown_agent", r.json()
                assert "create_agent" in r.json()["error"]
                alice_signer = AgentSigner("alice", alice, CHAIN)
                other_chain = bank_signer("other-chain").create_agent(alice_signer, electricity=100)
                r = await _post(client, other_chain)
                assert r.status_code == 400 and r.json()["code"] == "wrong_chain"
                forged = AgentSigner("bank", mallory, CHAIN).create_agent(alice_signer, electricity=100)
                r = await _post(client, forged)
                assert r.status_code == 400 and r.json()["code"] == "bad_signature"

                # the genesis bank creates alice: accepted once, then a duplicate
                bank = bank_signer(CHAIN)
                create = bank.create_agent(alice_signer, (0, 0, 0), electricity=1000, data=500)
                r = await _post(client, create)
                assert r.status_code == 202, r.json()
                r2 = await _post(client, create)
                assert r2.status_code in (200, 400)  # duplicate while pending, or replay once committed

                async def created():
                    resp = await client.get("/v1/agents/alice")
                    return resp.json() if resp.status_code == 200 else None

                agent = await _wait_for(created, "alice created")
                # a created agent has the endowment its creator gave and has used no nonce yet
                assert agent["last_nonce"] == 0 and agent["electricity"] == 1000 and agent["data"] == 500
                assert (await client.get("/v1/agents/bank")).json()["last_nonce"] == 1

                # after commit: the creation is a replay, a forged move is a bad signature
                r = await _post(client, create)
                assert r.status_code == 400 and r.json()["code"] == "nonce_replayed", r.json()
                r = await _post(client, sign_action(mallory, CHAIN, "alice", 1, MoveAgent(to=(1, 0, 0))))
                assert r.status_code == 400 and r.json()["code"] == "bad_signature"
                r = await _post(client, sign_action(alice, CHAIN, "alice", 1, MoveAgent(to=(1, 2, 0))))
                assert r.status_code == 202

                async def moved():
                    resp = await client.get("/v1/agents/alice")
                    return resp.json()["position"] == [1, 2, 0]

                await _wait_for(moved, "alice moved")
                r = await _post(client, sign_action(alice, CHAIN, "alice", 1, MoveAgent(to=(1, 0, 0))))
                assert r.status_code == 400 and r.json()["code"] == "nonce_replayed", r.json()
                # the move paid its fee and its distance in electricity
                assert (await client.get("/v1/agents/alice")).json()["electricity"] < 1000 - 3

                status = (await client.get("/v1/status")).json()
                assert status["chain_id"] == CHAIN and status["height"] >= 2
                assert status["execution_height"] == status["height"] or status["execution_height"] >= 2
                h = status["execution_height"]
                block = (await client.get(f"/v1/blocks/{h}")).json()
                assert block["height"] == h and len(block["block_hash"]) == 64
                exe = (await client.get(f"/v1/execution/{h}")).json()
                assert len(exe["execution_state_root"]) == 64
                assert (await client.get("/v1/blocks/999999")).status_code == 404
                assert (await client.get("/v1/blocks/-1")).status_code == 400
                assert (await client.get("/v1/execution/abc")).status_code == 400
                assert (await client.get("/v1/agents/nobody")).status_code == 404
                events = (await client.get("/v1/events", params={"kind": "domain."})).json()["events"]
                kinds = {e["kind"] for e in events}
                assert {"domain.agent_created", "domain.agent_moved"} <= kinds
                assert (await client.get("/v1/events", params={"limit": "0"})).status_code == 400
                metrics = (await client.get("/metrics")).text
                assert "awnode_blocks_committed_total" in metrics
                assert (await client.get("/health")).json() == {"status": "ok"}

    trio.run(main)


def test_full_mempool_answers_503_with_a_retry_hint(tmp_path):
    home = single_validator_home(tmp_path / "solo", chain_id=CHAIN, max_mempool=1)

    async def main():
        async with running_node(home) as node:
            assert node.replica.mempool.max_actions == 1
            bank = bank_signer(CHAIN)
            news = [AgentSigner(f"agent{i}", SigningKey(bytes([i + 1]) * 32), CHAIN) for i in range(3)]
            base = f"http://{node.config.rpc.listen}"
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                statuses = []
                for new in news:
                    r = await _post(client, bank.create_agent(new, electricity=100))
                    statuses.append(r)
                busy = [r for r in statuses if r.status_code == 503]
                # the pool holds one action; at least one of the two others, submitted before the
                # next block, is refused with a retry hint (a block may free the slot in between)
                assert busy, [r.status_code for r in statuses]
                assert busy[0].json()["code"] == "mempool_full"
                assert int(busy[0].headers["retry-after"]) >= 1
                assert busy[0].json()["retry_after_ms"] > 0

    trio.run(main)


def test_a_node_without_its_peers_refuses_actions_as_not_ready(tmp_path):
    """One of two validators, alone: it cannot get anything committed, so it takes no action
    (503 ``not_ready`` with a retry hint, single and batch), and ``/ready`` says why."""
    home = single_validator_home(tmp_path / "alone", chain_id=CHAIN, absent_validators=1)

    async def main():
        async with running_node(home) as node:
            bank = bank_signer(CHAIN)
            async with httpx.AsyncClient(base_url=f"http://{node.config.rpc.listen}", timeout=10) as client:
                ready = await client.get("/ready")
                assert ready.status_code == 503 and "no peers" in ready.json()["reason"]
                r = await _post(client, bank.sign(MoveAgent(to=(1, 0, 0))))
                assert r.status_code == 503, r.text
                assert r.json()["code"] == "not_ready" and "no peers connected" in r.json()["error"]
                assert int(r.headers["retry-after"]) >= 1
                batch = b'{"actions":[' + encode_json(bank.sign(MoveAgent(to=(2, 0, 0)))) + b"]}"
                rb = await client.post("/v1/actions/batch", content=batch, headers={"content-type": "application/json"})
                assert rb.status_code == 503 and rb.json()["code"] == "not_ready"
            assert len(node.replica.mempool) == 0

    trio.run(main)


def test_batch_submission_gives_a_result_per_action_and_commits_them(tmp_path):
    from agent_world_client.client import ActionRejected, NodeClient
    from agent_world_node.schema import MAX_SUBMIT_BATCH

    home = single_validator_home(tmp_path / "solo", chain_id=CHAIN)

    async def main():
        async with running_node(home) as node:
            base = f"http://{node.config.rpc.listen}"
            async with NodeClient(base, timeout_s=10) as client:
                keys = [SigningKey(bytes([i + 1]) * 32) for i in range(5)]
                bank = bank_signer(CHAIN)
                creates = [bank.create_agent(AgentSigner(f"b{i}", k, CHAIN), electricity=100) for i, k in enumerate(keys)]
                wrong_chain = bank_signer("other").create_agent(AgentSigner("x0", keys[0], "other"))
                results = await client.submit_batch(creates + [creates[0], wrong_chain])
                assert [r["status"] for r in results] == ["accepted"] * 5 + ["duplicate", "rejected"]
                assert results[6]["code"] == "wrong_chain" and "chain" in results[6]["error"]
                moves = [sign_action(k, CHAIN, f"b{i}", 1, MoveAgent(to=(i, 1, 0))) for i, k in enumerate(keys)]

                async def created():
                    return all(node.world.get_agent(f"b{i}") for i in range(5))

                await _wait_for(created, "the batch committed")
                assert [r["status"] for r in await client.submit_batch(moves)] == ["accepted"] * 5

                async def moved():
                    return all(node.world.get_agent(f"b{i}").position == (i, 1, 0) for i in range(5))

                await _wait_for(moved, "the moves committed")
                # a body that is not a batch, and a batch above the limit: 400 saying what to send
                r = await client._http.post("/v1/actions/batch", content=b'{"actions": 3}',
                                            headers={"content-type": "application/json"})
                assert r.status_code == 400 and "actions" in r.json()["error"]
                try:
                    await client.submit_batch([moves[0]] * (MAX_SUBMIT_BATCH + 1))
                except ActionRejected as exc:
                    assert str(MAX_SUBMIT_BATCH) in str(exc)
                else:
                    raise AssertionError("an oversized batch was accepted")

    trio.run(main)


def test_the_client_reads_the_status_through_the_api_schema(tmp_path, monkeypatch):
    from agent_world_client.client import BadResponse, NodeClient
    from agent_world_node.schema import StatusDocument

    home = single_validator_home(tmp_path / "solo", chain_id=CHAIN)

    async def main():
        async with running_node(home) as node, NodeClient(f"http://{node.config.rpc.listen}") as client:
            doc = await _wait_for(lambda: _committed(client), "a committed height")
            assert isinstance(doc, StatusDocument) and doc.chain_id == CHAIN
            assert doc.height >= 1 and doc.execution_diverged is None and doc.peer_filter.blocked == []

            async def wrong_shape(self):
                return {"height": "not a number"}

            monkeypatch.setattr(NodeClient, "status", wrong_shape)
            with pytest.raises(BadResponse, match="unexpected document"):
                await client.status_document()

    async def _committed(client):
        doc = await client.status_document()
        return doc if doc.height >= 1 else None

    trio.run(main)
