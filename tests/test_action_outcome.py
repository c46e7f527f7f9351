"""What became of an action: ``GET /v1/actions/{action_id}`` on a real (single-validator,
in-process) node, ``NodeClient.wait_action`` and ``awnode submit --wait`` / ``awnode action``:
pending, then committed with its outcome (applied with its events, or rejected with the world
rules' reason and the fee it paid), and clear 400/404 answers."""

from __future__ import annotations

import json

import httpx
import trio
from typer.testing import CliRunner

from agent_world_client.client import AgentKey, NodeClient, NotFound
from agent_world_runtime import compute_action_id
from agent_world_runtime.actions import TransferResource
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.signer import AgentSigner
from agent_world_tools import cli

from .node_harness import bank_signer, running_node, single_validator_home

CHAIN = "outcome-test"


def test_outcomes_of_applied_and_rejected_actions(tmp_path):
    home = single_validator_home(tmp_path / "solo", chain_id=CHAIN)
    alice = AgentSigner("alice", SigningKey(b"a" * 32), CHAIN)
    key_file = tmp_path / "alice.json"
    AgentKey(key=alice.key, agent_id="alice").save(key_file)

    async def main():
        async with running_node(home) as node:
            base = f"http://{node.config.rpc.listen}"
            async with NodeClient(base, timeout_s=10) as client, httpx.AsyncClient(base_url=base) as http:
                bank = bank_signer(CHAIN)
                create = bank.create_agent(alice, electricity=50)
                created_id = compute_action_id(create).hex()
                assert (await client.submit(create)).status == "accepted"
                first = await client.action(created_id)
                assert first["status"] in ("pending", "committed"), first
                applied = await client.wait_action(created_id, timeout_s=30)
                assert applied["status"] == "committed" and applied["outcome"] == "applied"
                assert applied["height"] >= 1 and applied["fee"] >= 1
                assert [e["kind"] for e in applied["events"]] == ["domain.agent_created"]

                # a transfer the world rejects (alice has 50, not 10,000): accepted, then rejected
                overdraft = alice.sign(TransferResource(to="bank", kind="electricity", amount=10_000))
                assert (await client.submit(overdraft)).status == "accepted"
                rejected = await client.wait_action(compute_action_id(overdraft).hex(), timeout_s=30)
                assert rejected["outcome"] == "rejected" and "10000" in rejected["reason"], rejected
                assert rejected["fee"] >= 1 and rejected["events"][0]["kind"] == "domain.action_rejected"

                # agents by pages, and the latest block
                first, after = await client.agents(limit=1)
                assert [a["agent_id"] for a in first] == ["alice"] and after == "alice"
                rest, end = await client.agents(after=after)
                assert [a["agent_id"] for a in rest] == ["bank"] and end is None
                latest = await client.latest_block()
                assert latest["height"] >= applied["height"]
                r = await http.get("/v1/agents", params={"limit": "0"})
                assert r.status_code == 400 and r.json()["code"] == "bad_query"

                # bad and unknown ids
                r = await http.get("/v1/actions/not-hex")
                assert r.status_code == 400 and r.json()["code"] == "bad_action_id"
                r = await http.get("/v1/actions/" + "00" * 32)
                assert r.status_code == 404 and r.json()["code"] == "unknown_action"
                try:
                    await client.action("00" * 32)
                    raise AssertionError("an unknown action was found")
                except NotFound:
                    pass

                # the CLI: submit --wait prints the outcome; a rejection exits 1 with the reason
                def cli_run(*args: str):
                    return CliRunner().invoke(cli.app, list(args))

                move = tmp_path / "move.json"
                move.write_text(json.dumps({"type": "move_agent", "to": [1, 0, 0]}))
                ok = await trio.to_thread.run_sync(cli_run, "submit", "--rpc", base, "--key", str(key_file),
                                                   "--wait", str(move))
                assert ok.exit_code == 0 and "applied at height" in ok.output, ok.output
                far = tmp_path / "far.json"
                far.write_text(json.dumps({"type": "move_agent", "to": [900, 900, 0]}))
                bad = await trio.to_thread.run_sync(cli_run, "submit", "--rpc", base, "--key", str(key_file),
                                                    "--wait", str(far))
                assert bad.exit_code == 1 and "rejected at height" in bad.output, bad.output
                looked = await trio.to_thread.run_sync(cli_run, "action", "--rpc", base, created_id)
                assert looked.exit_code == 0 and "applied at height" in looked.output, looked.output
                # --home finds the node's API in its config.toml, as status does
                by_home = await trio.to_thread.run_sync(cli_run, "action", "--home", str(home.root),
                                                       compute_action_id(overdraft).hex())
                assert by_home.exit_code == 1 and "rejected at height" in by_home.output, by_home.output

    trio.run(main)



def test_reserved_nonces_never_collide_and_stay_above_the_nodes(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from agent_world_tools.signing import reserve_nonce

    key_file = tmp_path / "k.json"
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: reserve_nonce(key_file, "c", "a", 4), range(40)))
    assert sorted(got) == list(range(5, 45))
    assert reserve_nonce(key_file, "c", "a", 100) == 101  # the node's executed nonce moved past ours
    assert reserve_nonce(key_file, "other-chain", "a", 0) == 1  # per chain and agent


def test_parallel_submits_with_one_key_all_commit(tmp_path):
    import subprocess
    import sys

    home = single_validator_home(tmp_path / "solo", chain_id=CHAIN)
    alice = AgentSigner("alice", SigningKey(b"a" * 32), CHAIN)
    key_file = tmp_path / "alice.json"
    AgentKey(key=alice.key, agent_id="alice").save(key_file)
    harvest = tmp_path / "give.json"
    harvest.write_text(json.dumps({"type": "transfer_resource", "to": "bank", "kind": "electricity", "amount": 1}))

    async def main():
        async with running_node(home) as node:
            base = f"http://{node.config.rpc.listen}"
            async with NodeClient(base, timeout_s=10) as client:
                create = bank_signer(CHAIN).create_agent(alice, electricity=500)
                await client.submit(create)
                await client.wait_action(compute_action_id(create).hex(), timeout_s=30)

                def submit():
                    return subprocess.run([sys.executable, "-m", "agent_world_tools.cli", "submit", "--rpc", base,
                                           "--key", str(key_file), str(harvest)], capture_output=True, text=True,
                                          timeout=60)

                async with trio.open_nursery() as nursery:
                    results = []

                    async def one():
                        results.append(await trio.to_thread.run_sync(submit))

                    for _ in range(3):
                        nursery.start_soon(one)
                nonces = sorted(int(r.stdout.split("nonce=")[1].split()[0]) for r in results)
                assert all(r.returncode == 0 and "accepted" in r.stdout for r in results), [r.stdout + r.stderr
                                                                                             for r in results]
                assert nonces == [1, 2, 3], nonces
                ids = [r.stdout.split("action_id=")[1].split()[0] for r in results]
                outcomes = [(await client.wait_action(i, timeout_s=30))["outcome"] for i in ids]
                assert outcomes == ["applied"] * 3, outcomes

    trio.run(main)
