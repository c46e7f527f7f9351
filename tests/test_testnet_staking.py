"""Staking and governance on a real 4-validator testnet of node processes.

1. A fifth node (a full node of ``add_testnet_node``) is made a validator with
   ``awnode staking create-validator`` (its consensus key, the faucet as operator): it is in the set from the epoch the event announces, and signs
   the commit certificates of that epoch's heights. A genesis validator's operator unbonds its
   whole bond: that validator leaves the set two epochs later and signs no certificate after.
2. Governance: a proposal raising ``fee_base`` and lowering ``module_limits_max.max_gas`` goes
   propose -> shadow -> vote -> apply (proposed and partly voted with ``awnode gov``); a second proposal rolls the manifest back to version 1; a
   third, which nobody votes for, expires. Every node reports the same manifest hash, and the
   execution state roots agree at every height.

Processes are bounded by timeouts and stopped in a finally.
"""

from __future__ import annotations

import sys
import time

import pytest
import structlog
import trio

from agent_world_client.client import AgentKey
from agent_world_node.config import NodeConfig, read_key
from agent_world_runtime.actions import (
    Bond,
    ProposeManifestPatch,
    ProposeRollback,
    Unbond,
    VoteProposal,
)
from agent_world_runtime.governance.records import PatchOp
from agent_world_runtime.signer import AgentSigner
from agent_world_tools.testnet import (
    NodeProcess,
    add_testnet_node,
    faucet_key_file,
    init_testnet,
    load_testnet,
    stop_all,
    wait_until_ready,
)
from agent_world_tools.testnet.homes import operator_key_file
from agent_world_tools.testnet.session import fetch_set_changes

from .testnet_clients import TestnetClients

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(420)]

EPOCH = 8
VOTING = 40
STEP_S = 90.0


@pytest.fixture(autouse=True)
def _quiet_structlog():
    import logging

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    yield
    structlog.reset_defaults()


def _quick(i: int) -> NodeConfig:
    config = NodeConfig()
    config.consensus.timeout_commit_ms = 200
    return config


class Net(TestnetClients):
    async def events(self, kind: str, i: int = 0) -> list[dict]:
        return await self.client(i).events(0, 1000, kind)

    async def wait_event(self, kind: str, match, what: str) -> dict:
        async def found():
            return next((e for e in await self.events(kind) if match(e["data"])), None)

        return await self.until(found, what)

    async def signers_at(self, height: int) -> set[str]:
        block = await self.client(0).block(height)
        return {sig[0] if isinstance(sig, list) else sig["validator"] for sig in block["certificate"]["signatures"]}

    async def height(self) -> int:
        return min((await self.exec_heights()).values())


def test_a_fifth_validator_joins_one_leaves_and_governance_changes_and_rolls_back_the_manifest(tmp_path):
    directory = tmp_path / "tn"
    init_testnet(directory, 4, config=_quick, epoch_length=EPOCH, voting_period_heights=VOTING)
    fifth = add_testnet_node(directory, config=_quick(4))
    nodes = load_testnet(directory)
    assert len(nodes) == 5
    procs = [NodeProcess(n) for n in nodes]
    chain_id = nodes[0].chain_id
    faucet = AgentSigner("faucet", AgentKey.load(faucet_key_file(directory)).key, chain_id)
    operators = [AgentSigner(f"operator{i}", AgentKey.load(operator_key_file(directory, i)).key, chain_id)
                 for i in range(4)]
    new_key = read_key(fifth.validator_key_file)
    new_id = new_key.public_key.hex()

    async def scenario(net: Net) -> None:
        await wait_until_ready(nodes, procs, timeout_s=120)
        # 1. the fifth node's key becomes a validator (the faucet operates it)
        await awnode("staking", "create-validator", "--home", str(fifth.root), "--key",
                     str(faucet_key_file(directory)), "--bond", "100", "--rpc", nodes[0].rpc_url)
        created = await net.wait_event("staking.validator_created", lambda d: d["validator_id"] == new_id,
                                       "the fifth validator's creation")
        join_epoch = created["data"]["earliest_epoch"]
        first = join_epoch * EPOCH
        print(f"measured: created at height {created['height']}, joins at epoch {join_epoch} (height {first})")
        await net.until(lambda: _reached(net, first + 6), f"height {first + 6}", STEP_S)
        # a certificate holds the quorum plus the precommits that came in during the commit wait: a
        # validator may miss one, not all of an epoch's first heights
        signed = [h for h in range(first, first + 6) if new_id in await net.signers_at(h)]
        assert signed, "the fifth validator signed no certificate of its epoch's first six heights"
        assert new_id not in await net.signers_at(first - 1)

        # 2. operator0 unbonds everything: node0's validator leaves two epochs later
        await sync_nonce(net, faucet)
        vid0 = read_key(nodes[0].home.validator_key_file).public_key.hex()
        await net.submit_all(1, [operators[0].sign(Unbond(validator_id=vid0, amount=100))])
        started = await net.wait_event("staking.unbonding_started", lambda d: d["validator_id"] == vid0,
                                       "operator0's unbonding")
        leave_epoch = started["height"] // EPOCH + 2
        gone = leave_epoch * EPOCH
        await net.until(lambda: _reached(net, gone + 2), f"height {gone + 2}", STEP_S)
        assert vid0 not in await net.signers_at(gone + 1), "the unbonded validator still signs"

        # 3. governance: fee_base 1 -> 2 and module_limits_max.max_gas 20M -> 10M
        await awnode("gov", "propose", "--key", str(faucet_key_file(directory)), "--title", "dearer actions",
                     "--set", "params.fee_base=2", "--set", "params.module_limits_max.max_gas=10000000",
                     "--rpc", nodes[1].rpc_url)
        submitted = await net.wait_event("governance.proposal_submitted", lambda d: d["proposal_id"] == 1, "proposal 1")
        report = await net.wait_event("governance.shadow_report", lambda d: d["proposal_id"] == 1, "its shadow report")
        assert not report["data"].get("errors"), report
        await awnode("gov", "vote", "1", "yes", "--validator", new_id, "--key", str(faucet_key_file(directory)),
                     "--rpc", nodes[2].rpc_url)
        await net.submit_all(2, [operators[i].sign(VoteProposal(
            proposal_id=1, validator_id=read_key(nodes[i].home.validator_key_file).public_key.hex(), option="yes"))
            for i in (1, 2)])
        await sync_nonce(net, faucet)
        applied = await net.wait_event("governance.applied", lambda d: d["proposal_id"] == 1, "proposal 1 applied")
        assert applied["height"] == submitted["data"]["voting_end"]
        await net.wait_exec_height(applied["height"])
        hashes = {e["data"]["manifest_hash"] for i in range(5)
                  for e in await net.events("manifest.updated", i) if e["data"]["version"] == 2}
        assert len(hashes) == 1, f"nodes report different manifest hashes: {hashes}"
        # a fee is now 2 + size: a bond of 1 by the faucet pays more than before
        before = (await net.client(0).agent("faucet"))["electricity"]
        await net.submit_all(0, [faucet.sign(Bond(validator_id=new_id, amount=1))])
        await net.until(lambda: _nonce(net, "faucet", faucet.next_nonce - 1), "the bond to commit")
        paid = before - (await net.client(0).agent("faucet"))["electricity"] - 1
        assert paid >= 3, f"the fee after the update is {paid}, not fee_base 2 + size"

        # 4. a rollback to version 1, and a proposal nobody votes for
        await net.submit_all(0, [faucet.sign(ProposeRollback(version=1, title="back to genesis rules"))])
        await net.wait_event("governance.proposal_submitted", lambda d: d["proposal_id"] == 2, "proposal 2")
        voters = [operators[i].sign(VoteProposal(proposal_id=2, validator_id=read_key(nodes[i].home.validator_key_file)
                                                 .public_key.hex(), option="yes")) for i in (1, 2, 3)]
        await net.submit_all(1, voters)
        await net.submit_all(0, [faucet.sign(ProposeManifestPatch(ops=[PatchOp("replace", "/params/harvest_amount", 7)],
                                                                  title="nobody will vote"))])
        rolled = await net.wait_event("governance.applied", lambda d: d["proposal_id"] == 2, "the rollback applied")
        assert rolled["data"].get("rolled_back_to") == 1
        await net.wait_event("governance.proposal_expired", lambda d: d["proposal_id"] == 3, "proposal 3 expired")
        final = await net.height()
        await net.wait_exec_height(final)
        v3 = {e["data"]["manifest_hash"] for i in range(5) for e in await net.events("manifest.updated", i)
              if e["data"]["version"] == 3}
        assert len(v3) == 1, f"nodes report different manifest hashes for version 3: {v3}"
        checker_common = await _agree(net)
        changes = await fetch_set_changes(net.client(0), EPOCH)
        print(f"measured: roots agree on heights 1..{checker_common}; set changes {changes}")
        assert any(new_id in c["added"] for c in changes) and any(vid0 in c["removed"] for c in changes)
        # honest validators that signed in time are never jailed for downtime (each block's last
        # commit carries the precommits its proposer gathered during the commit wait)
        assert await net.events("staking.validator_jailed") == []
        # joined, left, and the fifth validator's power grew by the faucet's bond of 1
        assert [(bool(c["added"]), bool(c["removed"]), c["changed"]) for c in changes] == [
            (True, False, []), (False, True, []), (False, False, [new_id])], changes

    async def main():
        net = Net(nodes, procs, STEP_S)
        try:
            with trio.fail_after(400):
                await scenario(net)
        finally:
            with trio.CancelScope(shield=True):
                await net.aclose()

    started = time.monotonic()
    try:
        for p in procs:
            p.start()
        trio.run(main)
    finally:
        codes = stop_all(procs, grace_s=15)
        print(f"\nnode exit statuses: {codes}; {time.monotonic() - started:.0f} s")


async def awnode(*args: str) -> None:
    """Run ``awnode ARGS`` as a user would; fail with its output unless it exits 0."""
    result = await trio.run_process([sys.executable, "-m", "agent_world_tools.cli", *args], capture_stdout=True,
                                    capture_stderr=True, check=False)
    out = (result.stdout + result.stderr).decode(errors="replace")
    print(f"$ awnode {' '.join(args[:2])} ...\n{out.strip()[-600:]}")
    assert result.returncode == 0, f"awnode {' '.join(args)} exited {result.returncode}:\n{out}"


async def sync_nonce(net: Net, agent: AgentSigner) -> None:
    """Let ``agent`` sign with the next nonce the chain expects (the CLI signed some of its actions)."""
    agent.next_nonce = (await net.client(0).agent(agent.agent_id))["last_nonce"] + 1


async def _reached(net: Net, height: int) -> bool:
    return await net.height() >= height


async def _nonce(net: Net, agent_id: str, nonce: int) -> bool:
    return all([(await c.agent(agent_id))["last_nonce"] >= nonce for c in net.clients.values()])


async def _agree(net: Net) -> int:
    from agent_world_tools.testnet.agreement import AgreementChecker

    common = await net.height()
    checker = AgreementChecker(net.clients)
    assert await checker.check_up_to(common), f"execution state roots differ: {checker.mismatch}"
    return common

