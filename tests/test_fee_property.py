"""Property: blocks built the way a node builds them keep the fee accounting exact.

Random actions from a few agents (moves, harvests, transfers and create_agent; next nonces, gaps and
replays; payloads of varying size through long ids and big amounts; some agents poor, some created
along the way) go into a mempool. For each block a proposer takes the mempool in (agent, nonce)
order and keeps what ``World.block_plan().admit`` accepts; the block then runs as on a node:
``begin_block``, ``collect_fees``, ``apply_action`` for each action, ``end_block``. Some blocks also
carry, at the end, the actions the plan refused (as an unchecked proposer would); the runtime must
reject those unpaid.

Checked for every block:

(a) each committed (plan-admitted) action's event carries ``fee == world.action_fee(signed)`` and
    every agent's balances change by exactly what the events say: minus fees, move costs,
    transfers out and endowments given; plus harvests, transfers in and endowments received;
(b) no signer of a committed action had less electricity before the block than the sum of its fees
    in the block, and no balance is ever negative;
(d) each plan-refused action is rejected with fee 0 and leaves its signer's nonce unused;

and for the whole run (c): the same blocks applied to a fresh world give the same state roots,
events roots and journal.
"""

from __future__ import annotations

from collections import defaultdict

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent_world_runtime import World, compute_action_id
from agent_world_runtime.actions import (
    CreateAgent,
    HarvestRadiation,
    MoveAgent,
    SignedAction,
    TransferResource,
    sign_action,
)
from agent_world_runtime.admission import RefusalCode, payload_size
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.params import GenesisAgent, WorldParams

CHAIN = "fee-prop-chain"
#: fee_per_kib=16 makes payload size matter (a 100-byte action pays 2 for its bytes, a 300-byte one 5).
PARAMS = WorldParams(fee_base=1, fee_per_kib=16, create_agent_fee=10, move_cost_per_step=1, harvest_amount=8,
                     harvest_interval=2, grid_size=5)
#: Genesis agents and their electricity: one rich, one comfortable, two poor.
GENESIS = {"bank": 10**6, "a0": 200, "a1": 25, "a2": 3}
#: Agents that only exist once some agent creates them (the long id makes a long payload).
NEW = ["n0", "n1", "n" + "x" * 40]
ALL = [*GENESIS, *NEW]
KEYS = {name: SigningKey(bytes([i + 1]) * 32) for i, name in enumerate(ALL)}

Entry = tuple[SignedAction, bytes, int]

nonce_mode = st.one_of(
    st.just(("next", 0)),
    st.just(("next", 0)),
    st.tuples(st.just("gap"), st.integers(1, 4)),
    st.tuples(st.just("replay"), st.integers(0, 1_000)),
)
action = st.one_of(
    st.tuples(st.just("move"), st.integers(-6, 6), st.integers(-6, 6)),
    st.tuples(st.just("harvest")),
    st.tuples(st.just("transfer"), st.sampled_from(ALL), st.sampled_from(["electricity", "data"]),
              st.one_of(st.integers(1, 60), st.integers(1, 1 << 62))),
    st.tuples(st.just("create"), st.sampled_from([*NEW, "a1", "bad\n"]), st.integers(0, 80), st.integers(0, 30)),
)
act = st.tuples(st.one_of(st.sampled_from(list(GENESIS)), st.sampled_from(ALL)), nonce_mode, action)
#: A run: for each block, the actions submitted before it and whether it also carries the refused ones.
runs = st.lists(st.tuples(st.lists(act, max_size=8), st.booleans()), min_size=1, max_size=8)


def genesis() -> World:
    agents = [GenesisAgent(name, KEYS[name].public_key.hex(), electricity=e, data=100) for name, e in GENESIS.items()]
    return World.from_genesis(CHAIN, PARAMS, agents=agents)


def to_action(spec: tuple):
    kind = spec[0]
    if kind == "move":
        return MoveAgent(to=(spec[1], spec[2], 0))
    if kind == "harvest":
        return HarvestRadiation()
    if kind == "transfer":
        return TransferResource(to=spec[1], kind=spec[2], amount=spec[3])
    new_id = spec[1]
    key = KEYS[new_id].public_key if new_id in KEYS else bytes(32)
    return CreateAgent(agent_id=new_id, public_key=key, electricity=spec[2], data=spec[3])


def entry(signed: SignedAction) -> Entry:
    return signed, compute_action_id(signed), payload_size(signed)


def propose(world: World, pending: list[Entry]) -> tuple[list[Entry], list[tuple[Entry, RefusalCode]]]:
    """The proposer: the mempool in (agent, nonce) order, split into what the plan admits and the rest."""
    plan = world.block_plan()
    chosen, refused = [], []
    for e in sorted(pending, key=lambda e: (e[0].body.agent_id, e[0].body.nonce, e[1])):
        refusal = plan.admit(e[0], e[2])
        if refusal is None:
            chosen.append(e)
        else:
            refused.append((e, refusal.code))
    return chosen, refused


def balances(world: World) -> dict[str, tuple[int, int]]:
    out = {}
    for name in ALL:
        rec = world.get_agent(name)
        if rec is not None:
            out[name] = (rec.electricity, rec.data)
    return out


def expected_balances(before: dict[str, tuple[int, int]], events) -> dict[str, tuple[int, int]]:
    """``before`` changed by exactly what ``events`` say."""
    delta: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    created = set()
    for ev in events:
        d = ev.data
        who = d["agent_id"]
        delta[who][0] -= d["fee"]
        if ev.kind == "domain.agent_moved":
            delta[who][0] -= d["cost"]
        elif ev.kind == "domain.radiation_harvested":
            delta[who][0] += d["amount"]
        elif ev.kind == "domain.resource_transferred":
            i = 0 if d["kind"] == "electricity" else 1
            delta[who][i] -= d["amount"]
            delta[d["to"]][i] += d["amount"]
        elif ev.kind == "domain.agent_created":
            delta[who][0] -= d["electricity"]
            delta[who][1] -= d["data"]
            delta[d["created_agent_id"]][0] += d["electricity"]
            delta[d["created_agent_id"]][1] += d["data"]
            created.add(d["created_agent_id"])
        else:
            assert ev.kind == "domain.action_rejected", ev
    out = dict(before)
    for name, (de, dd) in delta.items():
        if name in out or name in created or (de, dd) != (0, 0):  # (a refused unknown signer is not an agent)
            e, d = out.get(name, (0, 0))  # an agent created in the block starts from nothing
            out[name] = (e + de, d + dd)
    return out


def may_still_pass(world: World, signed: SignedAction) -> bool:
    """Whether a refused action might be admitted in a later block (its nonce is not used up)."""
    rec = world.get_agent(signed.body.agent_id)
    return rec is None or signed.body.nonce > rec.last_nonce


def run_block(world: World, block: list[Entry]) -> list:
    world.begin_block(world.height + 1, (world.height + 1) * 1_000)
    world.collect_fees(block)
    events = []
    for signed, action_id, payload_bytes in block:
        produced = world.apply_action(signed, action_id, payload_bytes=payload_bytes)
        assert len(produced) == 1, produced  # no modules here: one event per action
        events.append(produced[0])
    return events


def simulate(run: list[tuple]) -> tuple[list[list[Entry]], list[tuple[bytes, bytes]], World, dict[str, int]]:
    world = genesis()
    next_nonce = dict.fromkeys(ALL, 1)
    pending: list[Entry] = []
    blocks: list[list[Entry]] = []
    roots: list[tuple[bytes, bytes]] = []
    counts = {"committed": 0, "rejected_paid": 0, "refused_included": 0, "created": 0, "by_created": 0}
    for submitted, include_refused in run:
        for who, (mode, k), spec in submitted:
            if mode == "next":
                nonce = next_nonce[who]
            elif mode == "gap":
                nonce = next_nonce[who] + k
            else:
                nonce = k % next_nonce[who]  # a nonce at or below the last one signed
            next_nonce[who] = max(next_nonce[who], nonce + 1)
            pending.append(entry(sign_action(KEYS[who], CHAIN, who, nonce, to_action(spec))))
        chosen, refused = propose(world, pending)
        block = chosen + ([e for e, _ in refused] if include_refused else [])
        before = balances(world)
        last_nonce = {name: world.get_agent(name).last_nonce for name in before}
        fees: dict[str, int] = defaultdict(int)
        for signed, _, payload_bytes in chosen:
            fees[signed.body.agent_id] += world.action_fee(signed, payload_bytes)

        events = run_block(world, block)
        outcome = world.end_block()
        blocks.append(block)
        roots.append((outcome.state_root, outcome.events_root))

        # (a) the fee of each committed action, and every balance change explained by the events
        for (signed, _, payload_bytes), ev in zip(chosen, events, strict=False):
            fee = world.action_fee(signed, payload_bytes)
            assert fee > 0 and ev.data["fee"] == fee, (signed.body, ev)
            counts["committed"] += 1
            counts["rejected_paid"] += ev.kind == "domain.action_rejected"
            counts["created"] += ev.kind == "domain.agent_created"
            counts["by_created"] += signed.body.agent_id in NEW
        after = balances(world)
        assert after == expected_balances(before, events)
        # (b) every signer could pay all its fees of the block from its balance before it
        for agent_id, owed in fees.items():
            assert owed <= before[agent_id][0], (agent_id, owed, before[agent_id])
        assert all(e >= 0 and d >= 0 for e, d in after.values()), after
        # (d) what the plan refused was rejected unpaid and used no nonce
        for ev in events[len(chosen):]:
            assert ev.kind == "domain.action_rejected" and ev.data["fee"] == 0, ev
            counts["refused_included"] += 1
        committed_nonces: dict[str, int] = {}
        for signed, _, _ in chosen:
            committed_nonces[signed.body.agent_id] = signed.body.nonce  # increasing per agent
        for name in before:
            assert world.get_agent(name).last_nonce == committed_nonces.get(name, last_nonce[name]), name

        # The mempool keeps what may still be admitted later.
        keep = {RefusalCode.UNKNOWN_AGENT, RefusalCode.INSUFFICIENT_FEE}
        pending = [e for e, code in refused if code in keep and may_still_pass(world, e[0])]
    return blocks, roots, world, counts


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run=runs)
def test_node_built_blocks_pay_exact_fees_and_replay_identically(run):
    blocks, roots, world, counts = simulate(run)
    # (c) the same blocks on a fresh world: the same roots and journal
    fresh = genesis()
    replayed = []
    for block in blocks:
        run_block(fresh, block)
        outcome = fresh.end_block()
        replayed.append((outcome.state_root, outcome.events_root))
    assert replayed == roots
    assert fresh.journal_raw() == world.journal_raw()
    event(f"blocks: {'1' if len(blocks) == 1 else '2-4' if len(blocks) <= 4 else '5+'}")
    event(f"committed: {'0' if counts['committed'] == 0 else '1-9' if counts['committed'] < 10 else '10+'}")
    event(f"committed but rejected by the rules (paid): {'0' if counts['rejected_paid'] == 0 else '1+'}")
    event(f"plan-refused actions included: {'0' if counts['refused_included'] == 0 else '1+'}")
    event(f"agents created: {counts['created']}")
    event(f"actions committed by created agents: {'0' if counts['by_created'] == 0 else '1+'}")
