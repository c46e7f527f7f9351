"""Each action is decoded at most once per node: the node's ``ActionDecoder`` keeps the decoded
forms (from admission, gossip and valid(v)) for execution, and a late gossip copy of a committed
action is dropped by its id. Checked on simulated clusters of real replicas with client traffic."""

from __future__ import annotations

from collections import Counter

import pytest

from agent_world_node.replica import ActionDecoder
from agent_world_node.sim.cluster import SimCluster
from agent_world_node.sim.scenario import Scenario


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_node_decodes_an_action_twice(seed: int, monkeypatch: pytest.MonkeyPatch):
    decoded: dict[int, Counter[bytes]] = {}
    decode = ActionDecoder.decode

    def recording(self: ActionDecoder, action_id: bytes, payload: bytes):
        before = self.count
        signed = decode(self, action_id, payload)
        if self.count > before:  # decoded now, not handed back from the decoder's keep
            decoded.setdefault(id(self), Counter())[action_id] += 1
        return signed

    monkeypatch.setattr(ActionDecoder, "decode", recording)
    result = SimCluster(Scenario(seed=seed, stakes=(1, 1, 1, 1), heights=30)).run()
    assert result.ok, result.verdict()
    assert result.stats["actions_committed"] > 0
    assert len(decoded) == 4  # one decoder per node (no crash in this scenario)
    for counts in decoded.values():
        assert counts and max(counts.values()) == 1, counts.most_common(3)
