"""Attacks on a real 4-validator testnet (separate node processes on loopback): nothing is free, and
module work per block is bounded by fuel, never by time (docs/fees.md, docs/module-abi.md).

One testnet, one scenario, each attack class asserted on balances and events:

1. Compile-time bombs: an attacker deploys bomb modules (nest_loop, seq_loops, br_table, nest_loop
   again with a new nonce); each is rejected naming the structural limit, each pays its fee (at
   least payload KiB + module_deploy_fee), and the attacker's electricity drops by exactly the sum.
2. Fuel is not time: an attacker installs 10 tick instances of a worst-class module at the maximum
   max_gas; at every height the gas_used of all module calls sums to at most
   BLOCK_MODULE_GAS_BUDGET, the budget binds (some calls refused), every charged call paid
   ceil(gas_used * price / 1e6) data, and the attacker's balances drop by exactly its action fees plus
   the module charges. Block intervals are printed, never asserted.
3. Unbilled growth: an agent left with almost nothing owns tick instances: each gets
   module.deactivated, and over at least 10 further heights no module event names them.
4. Free drain: a victim's module watches every action (post_action "*"); an attacker sends actions
   the world rejects: each carries a fee > 0, the attacker's electricity drops by exactly their sum,
   its data is untouched, and the victim (not the attacker) pays its module's calls.
5. An action whose signer cannot pay its fee is refused at admission by every node
   (insufficient_fee, HTTP 400) and is in no block.
6. Every node progressed during the attacks and all four agree on the execution state root at every
   height they all executed.

Bounded by trio.fail_after; every node process is stopped in a finally; all files under tmp_path.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import structlog
import trio

from agent_world_client.client import ActionRejected, AgentKey, NotFound
from agent_world_runtime.actions import (
    DeployModuleArtifact,
    InstallModuleFromArtifact,
    MoveAgent,
    SetModuleInstanceActive,
    SignedAction,
    TransferResource,
)
from agent_world_runtime.admission import payload_size
from agent_world_runtime.crypto import sha256
from agent_world_runtime.fees import action_fee
from agent_world_runtime.modules.abi import BLOCK_MODULE_GAS_BUDGET
from agent_world_runtime.modules.manifest import ModuleLimits, ModuleLimitsMax, ModuleManifest, Subscription
from agent_world_runtime.modules.sandbox import wat_to_wasm
from agent_world_runtime.signer import AgentSigner
from agent_world_runtime.world import compute_action_id
from agent_world_tools.testnet import (
    TESTNET_WORLD,
    AgreementChecker,
    NodeProcess,
    faucet_key_file,
    init_testnet,
    load_testnet,
    stop_all,
    wait_until_ready,
)
from benchmarks import wasm_gen

from .testnet_clients import TestnetClients

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(330)]

SCENARIO_S = 240.0  # the whole scenario, startup included
STEP_S = 60.0  # one wait for commits / heights
PARAMS = TESTNET_WORLD
MAX_GAS = ModuleLimitsMax().max_gas  # the world's ceiling on a call's fuel (20 M)
TICK = [Subscription(kind="tick", stage="tick")]
BURNER_INSTANCES = 10
BURN_HEIGHTS = 8  # heights the burner's instances run before it turns them off
GROWTH_HEIGHTS = 10  # heights after deactivation without events of the broke agent's instances
WORST_CLASS = "random_load_16mib"  # burns its whole max_gas; among the slowest classes per fuel unit

BOMBS = [  # (kind, size, the limit its rejection must name)
    ("nest_loop", 20_000, "MAX_NESTING_DEPTH"),
    ("seq_loops", 20_000, "MAX_COMPILE_WEIGHT"),
    ("br_table", 5_000, "MAX_BR_TABLE_TARGETS"),
    ("nest_loop", 20_000, "MAX_NESTING_DEPTH"),  # the same bomb again: pays again
]


@pytest.fixture(autouse=True)
def _quiet_structlog():
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    yield
    structlog.reset_defaults()


# --- helpers ----------------------------------------------------------------------------------------


def tagged(wasm: bytes, tag: str) -> bytes:
    """``wasm`` with a custom section naming ``tag``: distinct bytes, hence a distinct artifact."""
    return wasm + wasm_gen.section(0, wasm_gen.name("tag") + tag.encode())


def deploy(signer: AgentSigner, wasm: bytes, manifest: ModuleManifest) -> SignedAction:
    return signer.sign(DeployModuleArtifact(wasm_hash=sha256(wasm).hex(), wasm_bytes=wasm, manifest=manifest))


def install(signer: AgentSigner, wasm: bytes, instance_id: str) -> SignedAction:
    return signer.sign(InstallModuleFromArtifact(wasm_hash=sha256(wasm).hex(), instance_id=instance_id))


def fee_of(signed: SignedAction) -> int:
    """The fee every node charges for ``signed`` (docs/fees.md)."""
    return action_fee(PARAMS, signed.body.action, payload_size(signed))


def aid(signed: SignedAction) -> str:
    return compute_action_id(signed).hex()


def event_aid(event: dict) -> str:
    """The action id (hex) of a journal event."""
    return event["data"]["action_id"]


def gas_fee(gas_used: int) -> int:
    return -(-gas_used * PARAMS.gas_price_per_mfuel // 1_000_000)


class Net(TestnetClients):
    """Clients of the four nodes and the waits the scenario needs."""

    def __init__(self, nodes, procs):
        super().__init__(nodes, procs, STEP_S)

    async def agent_everywhere(self, agent_id: str) -> list[dict]:
        return [await c.agent(agent_id) for c in self.clients.values()]

    async def wait_nonce(self, agent_id: str, nonce: int, *, settled: bool = True) -> dict:
        """Wait until every node executed ``agent_id``'s action ``nonce``; return node0's agent record.
        ``settled``: nothing else changes the agent's balances any more, so every node must report
        the same record once all have passed that height (False while its modules are billed every
        block)."""

        async def done():
            try:
                records = await self.agent_everywhere(agent_id)
            except NotFound:
                return None
            return all(r["last_nonce"] >= nonce for r in records)

        await self.until(done, f"{agent_id}'s nonce {nonce} to commit on every node")
        await self.wait_exec_height(max((await self.exec_heights()).values()))
        records = await self.agent_everywhere(agent_id)
        assert not settled or all(r == records[0] for r in records), records
        return records[0]

    async def events(self, kind: str) -> list[dict]:
        """Every journal event of node0 whose kind starts with ``kind``."""
        out: list[dict] = []
        seq = 0
        while True:
            batch = await self.first.events(seq, 1000, kind)
            out.extend(batch)
            if len(batch) < 1000:
                return out
            seq = batch[-1]["seq"] + 1

    async def block_times(self, lo: int, hi: int) -> dict[int, int]:
        """Header timestamp (proposer clock, ms) of heights ``lo..hi`` on node0."""
        return {h: (await self.first.block(h))["header"]["timestamp_ms"] for h in range(lo, hi + 1)}



def intervals(times: dict[int, int], lo: int, hi: int) -> list[int]:
    return [times[h] - times[h - 1] for h in range(lo + 1, hi + 1) if h in times and h - 1 in times]


def describe(ms: list[int]) -> str:
    if not ms:
        return "none"
    ordered = sorted(ms)
    return (f"{len(ms)} intervals, median {ordered[len(ms) // 2]} ms, max {ordered[-1]} ms, "
            f"mean {sum(ms) / len(ms):.0f} ms")


# --- the scenario -----------------------------------------------------------------------------------


async def scenario(nodes, procs, directory: Path) -> None:
    net = Net(nodes, procs)
    try:
        with trio.fail_after(SCENARIO_S):
            await wait_until_ready(nodes, procs, timeout_s=90)
            await attacks(net, nodes[0].chain_id, directory)
    finally:
        with trio.CancelScope(shield=True):
            await net.aclose()


async def attacks(net: Net, chain_id: str, directory: Path) -> None:
    faucet_key = AgentKey.load(faucet_key_file(directory))
    faucet = AgentSigner("faucet", faucet_key.key, chain_id)
    start_heights = {name: s["height"] for name, s in (await net.statuses()).items()}

    def agent(name: str) -> AgentSigner:
        return AgentSigner.from_seed(name, os.urandom(32), chain_id)

    bomber, burner, broke, victim, drainer, pauper = (
        agent(n) for n in ("bomber", "burner", "broke", "victim", "drainer", "pauper"))
    tiny = wat_to_wasm(wasm_gen.TINY)

    # The broke agent's actions are signed up front so that it gets exactly their fees.
    broke_wasm = tagged(tiny, "broke")
    broke_ids = [f"broke-{i}" for i in range(3)]
    broke_actions = [deploy(broke, broke_wasm, ModuleManifest(
        module_id="broke_ticker", version="1.0.0", subscriptions=TICK, limits=ModuleLimits(max_gas=5_000_000)))]
    broke_actions += [install(broke, broke_wasm, iid) for iid in broke_ids]
    broke_fees = sum(fee_of(a) for a in broke_actions)

    created = [
        faucet.create_agent(bomber, electricity=1_000_000, data=1_000),
        faucet.create_agent(burner, electricity=10_000_000, data=10_000_000),
        # almost nothing: its fees exactly, and 2 data (a tick call's pre-call fees need 6)
        faucet.create_agent(broke, electricity=broke_fees, data=2),
        faucet.create_agent(victim, electricity=1_000_000, data=1_000_000),
        faucet.create_agent(drainer, electricity=10_000, data=500),
        faucet.create_agent(pauper, electricity=1, data=0),  # a move costs 2
    ]
    await net.submit_all(0, created)
    await net.wait_nonce("faucet", len(created))
    balances = {s.agent_id: await net.first.agent(s.agent_id) for s in (bomber, burner, broke, victim, drainer, pauper)}
    assert balances["broke"]["electricity"] == broke_fees and balances["pauper"]["electricity"] == 1

    # --- 1, 3, 4 (setup) and 5 at once, each agent through another node --------------------------
    bombs = [bomb_signed(bomber, i, kind, n) for i, (kind, n, _) in enumerate(BOMBS)]
    watch_wasm = tagged(tiny, "watch")
    watch_manifest = ModuleManifest(module_id="watch_all", version="1.0.0",
                                    subscriptions=[Subscription(kind="*", stage="post_action")],
                                    limits=ModuleLimits(max_gas=200_000))
    await net.submit_all(1, bombs)
    await net.submit_all(2, broke_actions)
    await net.submit_all(3, [deploy(victim, watch_wasm, watch_manifest), install(victim, watch_wasm, "watch")])

    pauper_move = pauper.sign(MoveAgent(to=(1, 0, 0)))
    assert fee_of(pauper_move) > 1
    for i in range(len(net.nodes)):
        with pytest.raises(ActionRejected) as refused:
            await net.client(i).submit(pauper_move)
        assert refused.value.code == "insufficient_fee" and refused.value.status == 400, refused.value
    pauper_submitted_at = min((await net.exec_heights()).values())

    # 1. compile-time bombs: rejected naming the limit, each paid for
    bomber_after = await net.wait_nonce("bomber", len(bombs))
    rejected = {event_aid(e): e for e in await net.events("domain.action_rejected")
                if e["data"]["agent_id"] == "bomber"}
    assert set(rejected) == {aid(s) for s in bombs}, rejected
    for signed, (kind, _, limit) in zip(bombs, BOMBS, strict=True):
        data = rejected[aid(signed)]["data"]
        assert data["action_kind"] == "deploy_module_artifact"
        assert f"module exceeds {limit}" in data["reason"], (kind, data["reason"])
        size = len(signed.body.action.wasm_bytes)
        assert data["fee"] == fee_of(signed) >= -(-size // 1024) + PARAMS.module_deploy_fee, (kind, data)
    bomb_fees = sum(e["data"]["fee"] for e in rejected.values())
    assert balances["bomber"]["electricity"] - bomber_after["electricity"] == bomb_fees
    assert bomber_after["data"] == balances["bomber"]["data"] and bomber_after["last_nonce"] == len(bombs)
    modules = await net.first.modules()
    assert not [a for a in modules["artifacts"] if a["publisher"] == "bomber"], modules["artifacts"]
    print(f"\n1. bombs: {len(bombs)} deploys rejected, fees {[e['data']['fee'] for e in rejected.values()]}")

    # 3. unbilled growth: the broke agent's instances are turned off at their first tick
    broke_after = await net.wait_nonce("broke", len(broke_actions))
    assert broke_after["electricity"] == 0 and broke_after["data"] == 2, broke_after
    deactivated = await net.until(lambda: deactivations(net, set(broke_ids)), "the broke instances' deactivation")
    deactivated_at = max(e["height"] for e in deactivated.values())
    failed = [e for e in await net.events("module.call_failed") if e["data"]["instance_id"] in broke_ids]
    assert sorted(e["data"]["instance_id"] for e in failed) == broke_ids
    assert all(e["data"]["code"] == "INSUFFICIENT_FUNDS" and e["data"]["gas_used"] == 0 for e in failed), failed

    # 4. free drain: rejected actions pay; the victim pays for its own module
    await net.wait_nonce("victim", 2, settled=False)  # its module is billed for every action
    drain = []
    for i in range(30):
        if i % 2:
            drain.append(drainer.sign(TransferResource(to="nobody-at-all", kind="electricity", amount=1)))
        else:
            drain.append(drainer.sign(MoveAgent(to=(PARAMS.grid_size + 1 + i, 0, 0))))
    victim_before = await net.first.agent("victim")
    await net.submit_all(2, drain)
    drainer_after = await net.wait_nonce("drainer", len(drain))
    rejected = {event_aid(e): e for e in await net.events("domain.action_rejected")
                if e["data"]["agent_id"] == "drainer"}
    assert set(rejected) == {aid(s) for s in drain}, "every drain action was committed and rejected"
    for signed in drain:
        data = rejected[aid(signed)]["data"]
        assert data["fee"] == fee_of(signed) > 0, data
    drain_fees = sum(e["data"]["fee"] for e in rejected.values())
    assert balances["drainer"]["electricity"] - drainer_after["electricity"] == drain_fees
    assert drainer_after["data"] == balances["drainer"]["data"]
    charged = await net.events("module.runtime_charged")
    # trace_id of a post_action call: "<height>/<action id, 16 hex>/post_action/<instance>"
    watch_calls = {e["data"]["trace_id"].split("/")[1]: e for e in charged if e["data"]["instance_id"] == "watch"}
    assert all(e["data"]["payer_agent_id"] == "victim" for e in watch_calls.values())
    assert all(aid(s)[:16] in watch_calls for s in drain), "the victim's module saw every drain action"
    assert not [e for e in charged if e["data"]["payer_agent_id"] == "drainer"]
    victim_now = await net.first.agent("victim")
    assert victim_now["data"] < victim_before["data"]
    print(f"4. drain: {len(drain)} rejected actions cost the drainer {drain_fees} electricity; "
          f"the victim paid {victim_before['data'] - victim_now['data']} data for its own module")

    # --- 2. fuel is not time ------------------------------------------------------------------
    burn_wasm = tagged(wat_to_wasm(wasm_gen.RUNTIME_CLASSES[WORST_CLASS]), "burn")
    burn_manifest = ModuleManifest(module_id="burn", version="1.0.0", subscriptions=TICK,
                                   limits=ModuleLimits(max_gas=MAX_GAS, max_mem_bytes=16 << 20, max_output_bytes=1024))
    burn_ids = [f"burn-{i:02d}" for i in range(BURNER_INSTANCES)]
    burner_actions = [deploy(burner, burn_wasm, burn_manifest)] + [install(burner, burn_wasm, iid) for iid in burn_ids]
    await net.submit_all(1, burner_actions)
    await net.wait_nonce("burner", len(burner_actions), settled=False)
    installed = [e for e in await net.events("module.installed") if e["data"]["instance_id"] in burn_ids]
    installed_at = max(e["height"] for e in installed)
    await net.wait_exec_height(installed_at + BURN_HEIGHTS)
    off = [burner.sign(SetModuleInstanceActive(instance_id=iid, active=False)) for iid in burn_ids]
    burner_actions += off
    await net.submit_all(1, off)
    burner_after = await net.wait_nonce("burner", len(burner_actions))
    changed = [e for e in await net.events("module.activation_changed") if e["data"]["instance_id"] in burn_ids]
    assert len(changed) == BURNER_INSTANCES
    off_from = min(e["height"] for e in changed)
    assert off_from - installed_at - 1 >= BURN_HEIGHTS - 1

    charged = await net.events("module.runtime_charged")
    failed = await net.events("module.call_failed")
    gas_by_height: dict[int, int] = {}
    for e in charged:
        gas_by_height[e["height"]] = gas_by_height.get(e["height"], 0) + e["data"]["gas_used"]
        assert e["data"]["gas_fee_amount"] == gas_fee(e["data"]["gas_used"]), e
    over = {h: g for h, g in gas_by_height.items() if g > BLOCK_MODULE_GAS_BUDGET}
    assert not over, f"module gas above the block budget at heights {over}"
    burn_charged = [e for e in charged if e["data"]["instance_id"] in burn_ids]
    assert all(e["data"]["payer_agent_id"] == "burner" for e in burn_charged)
    full = range(installed_at + 1, off_from)  # every burn instance active and ticked
    for h in full:
        ran = [e for e in failed if e["height"] == h and e["data"]["instance_id"] in burn_ids
               and e["data"]["gas_used"] == MAX_GAS]
        refused = [e for e in failed if e["height"] == h and e["data"]["instance_id"] in burn_ids
                   and e["data"]["gas_used"] == 0 and "budget" in e["data"]["detail"]]
        assert all(e["data"]["code"] == "OUT_OF_GAS" for e in ran + refused)
        assert len(ran) >= BLOCK_MODULE_GAS_BUDGET // MAX_GAS - 1, (h, len(ran))
        assert len(ran) + len(refused) == BURNER_INSTANCES and refused, (h, len(ran), len(refused))
        assert gas_by_height[h] >= len(ran) * MAX_GAS
    action_fees = sum(fee_of(a) for a in burner_actions)
    electricity_fees = sum(e["data"]["electricity_fee_amount"] for e in burn_charged)
    data_fees = sum(e["data"]["compute_fee_amount"] + e["data"]["gas_fee_amount"] for e in burn_charged)
    assert balances["burner"]["electricity"] - burner_after["electricity"] == action_fees + electricity_fees
    assert balances["burner"]["data"] - burner_after["data"] == data_fees
    assert sum(e["data"]["gas_fee_amount"] for e in burn_charged) >= len(full) * 4 * gas_fee(MAX_GAS)
    times = await net.block_times(max(1, installed_at - 10), off_from)
    before, during = intervals(times, max(1, installed_at - 10), installed_at), intervals(times, installed_at, off_from)
    load = os.getloadavg()
    print(f"2. fuel budget: heights {full.start}..{full.stop - 1} full; module gas per height "
          f"{[gas_by_height.get(h, 0) for h in full]} (budget {BLOCK_MODULE_GAS_BUDGET}); burner paid "
          f"{action_fees + electricity_fees} electricity, {data_fees} data")
    print(f"   block intervals before: {describe(before)}: {before}")
    print(f"   block intervals under attack: {describe(during)}: {during}")
    print(f"   load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cpus")

    # --- 3 (end): no growth over GROWTH_HEIGHTS heights after the deactivation -------------------
    await net.wait_exec_height(deactivated_at + GROWTH_HEIGHTS)
    later = [e for e in await net.events("module.") if e["data"].get("instance_id") in broke_ids
             and e["height"] > deactivated_at]
    assert later == [], later
    broke_now = await net.first.agent("broke")
    assert (broke_now["electricity"], broke_now["data"]) == (0, 2), broke_now
    print(f"3. growth: {len(broke_ids)} instances deactivated at height {deactivated_at}; no module events "
          f"for them through height {min((await net.exec_heights()).values())}")

    # --- 5 (end): the pauper's action is in no block ----------------------------------------------
    records = await net.agent_everywhere("pauper")
    assert all(r["last_nonce"] == 0 and r["electricity"] == 1 for r in records), records
    top = min((await net.exec_heights()).values())
    for h in range(pauper_submitted_at, top + 1):
        block = await net.first.block(h)
        assert aid(pauper_move) not in {a["action_id"] for a in block["actions"]}, h
    print(f"5. the pauper's move was refused by all 4 nodes and is in none of blocks {pauper_submitted_at}..{top}")

    # --- 6. progress and agreement --------------------------------------------------------------
    statuses = await net.statuses()
    for name, s in statuses.items():
        assert s["height"] > start_heights[name] + GROWTH_HEIGHTS, (name, start_heights[name], s["height"])
    common = min(s["execution_height"] for s in statuses.values())
    checker = AgreementChecker(net.clients)
    assert await checker.check_up_to(common), f"execution state roots differ: {checker.mismatch}"
    assert checker.checked_up_to == common, checker.last_error
    net.check_alive()
    end_heights = {name: s["height"] for name, s in statuses.items()}
    print(f"6. heights {start_heights} -> {end_heights}; roots agree at every height 1..{common}")


def bomb_signed(bomber: AgentSigner, index: int, kind: str, n: int) -> SignedAction:
    manifest = ModuleManifest(module_id=f"bomb{index}", version="1.0.0", subscriptions=TICK)
    return deploy(bomber, wasm_gen.bomb(kind, n), manifest)


async def deactivations(net: Net, instance_ids: set[str]) -> dict[str, dict] | None:
    found = {e["data"]["instance_id"]: e for e in await net.events("module.deactivated")
             if e["data"]["instance_id"] in instance_ids}
    return found if set(found) == instance_ids else None


def test_attacks_cost_their_senders_and_nodes_agree(tmp_path):
    directory = tmp_path / "tn"
    init_testnet(directory, 4)
    nodes = load_testnet(directory)
    procs = [NodeProcess(n) for n in nodes]
    try:
        for p in procs:
            p.start()
        trio.run(scenario, nodes, procs, directory)
    finally:
        codes = stop_all(procs, grace_s=15)
    assert all(code is not None for code in codes.values()), codes
