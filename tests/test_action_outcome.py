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

    trio.run(main)

