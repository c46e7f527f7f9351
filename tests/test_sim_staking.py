"""Validator-set changes in the simulator: scenarios whose operators leave, rejoin and bond more
keep every property across epochs; a Twins validator is slashed and jailed by the evidence of its
double signs; and a node that judges heights with the validator set of the wrong epoch is caught."""

from __future__ import annotations

from agent_world_node.replica import Replica
from agent_world_node.sim import Scenario
from agent_world_node.sim.cluster import SimCluster, SimNode


def test_drawn_scenarios_change_the_set_and_keep_every_property():
    changed = 0
    for seed in range(8):
        scenario = Scenario.generate(seed)
        assert scenario.stake_changes, scenario.summary()
        result = SimCluster(scenario).run()
        assert result.ok, result.verdict()
        changed += result.stats["validator_sets"] >= 2
    assert changed >= 6, f"only {changed} of 8 runs certified heights with more than one validator set"


def test_a_twins_validator_is_slashed_jailed_and_leaves_the_set():
    scenario = Scenario.generate(0, stakes=[3, 3, 3, 3, 2], byzantine=[(4, "twins")], faults=[], stake_changes=False)
    cluster = SimCluster(scenario)
    result = cluster.run()
    assert result.ok, result.verdict()
    twin = cluster.keys[4].public_key.hex()
    world = cluster.checker.reference_world
    record = world.validator_record(twin)
    assert record is not None and record.jailed and record.jail_reason == "double_sign"
    assert record.slashed >= 1 and record.bonded == 2 - record.slashed
    last = max(e for e in range(20) if world.validator_set(e) is not None)
    assert twin not in dict(world.validator_set(last).validators), "the jailed twin is still in the last set"
    slashes = [e for e in world.events(0, 100_000, "staking.validator_slashed") if e.data["validator_id"] == twin]
    assert slashes and slashes[0].data["burned"] >= 1


class WrongEpochCluster(SimCluster):
    """A cluster whose node n0 judges every height with the validator set of the epoch before
    (a planted bug: the set of the wrong epoch)."""

    def _open(self, node: SimNode) -> Replica:
        replica = super()._open(node)
        if node.name == "n0":
            sets, length = replica.sets, self.genesis.epoch_length
            at, hash_at = sets.at, sets.hash_at
            sets.at = lambda h: at(max(0, h - length))  # type: ignore[method-assign]
            sets.hash_at = lambda h: hash_at(max(0, h - length))  # type: ignore[method-assign]
        return replica


def test_judging_heights_with_the_wrong_epochs_set_is_caught():
    caught = 0
    for seed in range(6):
        scenario = Scenario.generate(seed, faults=[], byzantine=[])
        result = WrongEpochCluster(scenario, stop_on_violation=False).run()
        caught += not result.ok
        # the same planted bug is harmless while the set never changes: what is caught is the epoch
        same = WrongEpochCluster(Scenario.generate(seed, faults=[], byzantine=[], stake_changes=False)).run()
        assert same.ok, same.verdict()
    assert caught >= 5, f"the wrong-epoch node was caught in only {caught} of 6 runs with set changes"


def test_a_late_joiner_syncs_from_genesis_across_set_changes():
    runs = 0
    for seed in range(4):
        scenario = Scenario.generate(seed, late_joiner=True)
        assert scenario.late_joiner_at_ms > 0 and ("late", -1) in scenario.node_names()
        result = SimCluster(scenario).run()
        assert result.ok, result.verdict()
        assert result.heights["late"] >= scenario.heights and result.stats.get("late_joins") == 1
        runs += result.stats["validator_sets"] >= 2
    assert runs >= 3, f"only {runs} of 4 late-joiner runs crossed a set change"
