"""The staking and governance routes of a real (single-validator, in-process) node: the node
serves them from its executed world, and a create_validator signed through the API shows up.
Starts a node: run under ``flock /tmp/heavy.lock`` on shared machines."""

from __future__ import annotations

import httpx
import trio

from agent_world_runtime.actions import CreateValidator, validator_key_proof
from agent_world_runtime.codec import encode_json
from agent_world_runtime.crypto import SigningKey

from .node_harness import bank_signer, running_node, single_validator_home

CHAIN = "staking-node"


def test_a_node_serves_staking_and_manifest_reads_and_a_new_validator_appears(tmp_path):
    home = single_validator_home(tmp_path / "solo", chain_id=CHAIN)
    new_key = SigningKey(b"\x44" * 32)
    new_id = new_key.public_key.hex()

    async def main():
        async with running_node(home) as node:
            async with httpx.AsyncClient(base_url=f"http://{node.config.rpc.listen}", timeout=10) as client:
                doc = (await client.get("/v1/staking/validators")).json()
                (solo,) = doc["validators"]
                assert solo["in_current_set"] and solo["power"] == 100 and solo["name"] == "solo"
                assert doc["epoch_length"] == node.world.epoch_length
                manifest = (await client.get("/v1/manifest")).json()
                assert manifest["version"] == 1 and manifest["proposal_id"] == 0 and len(manifest["hash"]) == 64
                sets = (await client.get("/v1/staking/sets")).json()["sets"]
                assert [s["epoch"] for s in sets][:2] == [0, 1] and sets[0]["validators"] == [[solo["validator_id"], 100]]
                assert (await client.get("/v1/governance/proposals")).json() == {"proposals": [], "next_before": None}
                assert (await client.get(f"/v1/staking/validators/{new_id}")).status_code == 404

                proof = validator_key_proof(new_key, CHAIN, "bank")
                signed = bank_signer(CHAIN).sign(CreateValidator(validator_key=new_key.public_key, bond=500,
                                                                 proof=proof, name="second"))
                r = await client.post("/v1/actions", content=encode_json(signed),
                                      headers={"content-type": "application/json"})
                assert r.status_code == 202, r.json()
                with trio.fail_after(20):
                    while (r := await client.get(f"/v1/staking/validators/{new_id}")).status_code != 200:
                        await trio.sleep(0.1)
                created = r.json()
                assert created["operator"] == "bank" and created["bonds"] == {"bank": 500}
                assert created["in_current_set"] is False and created["power"] == 0

    trio.run(main)
