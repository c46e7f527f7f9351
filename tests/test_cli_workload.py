"""The scripted workload against in-memory fake nodes (httpx.MockTransport) on trio's virtual clock:
agents created by the sponsor before acting, strictly increasing nonces, the builder's
compile+install+upgrade, harvests only when the interval allows, pacing, counted rejections and
503 retries, and key reuse across runs."""

from __future__ import annotations

import json
import math

import httpx
import pytest
import trio
import trio.testing

from agent_world_agents.runtime import DEFAULT_ENDOWMENT
from agent_world_agents.scripted import find_artifact, find_instance
from agent_world_client.client import AgentKey
from agent_world_runtime.actions import (
    CompileModuleArtifactFromSource,
    CreateAgent,
    HarvestRadiation,
    InstallModuleFromArtifact,
    MoveAgent,
    TransferResource,
    UpgradeModuleFromArtifact,
    decode_signed_action_json,
    verify_action_signature,
)
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.params import WorldParams
from agent_world_tools.workload import Pacer, WorkloadStats, agent_id_for, run_workload

CHAIN = "fake-chain"
FAUCET_ID = "faucet"
FAUCET = AgentKey(SigningKey(b"\xfa" * 32), FAUCET_ID)
FAUCET_BALANCE = 10**15
PARAMS = WorldParams()
FEE = 2  # what every action costs in the fake (about the real fee of a small action)
CREATE_FEE = FEE + PARAMS.create_agent_fee


class FakeCluster:
    """One shared world behind several node URLs, holding the genesis agent ``faucet``.

    Admission is the real node's, simplified: the signer must be visible (else ``unknown_agent``,
    even for the agent a create_agent is about to make), its signature valid, its nonce above its
    last one (``nonce_replayed``), and its electricity must cover the fee (``FEE``, ``CREATE_FEE``
    for create_agent; else ``insufficient_fee``). Accepted actions execute at once and pay their fee
    first, but a created agent becomes visible only ``commit_delay_s`` (virtual) seconds later, and
    artifacts/instances likewise. A create_agent for an existing id, and a harvest less than
    ``harvest_interval`` heights after the agent's last, are accepted and then rejected by the world
    (counted in ``world_rejected``), as a real node does. The height is one per ``commit_delay_s``
    (GET /v1/status). Every ``busy_every``-th POST answers 503 once. Transfers to unknown agents are
    rejected with 400."""

    def __init__(self, *, commit_delay_s: float = 1.0, busy_every: int = 9) -> None:
        self.commit_delay_s = commit_delay_s
        self.busy_every = busy_every
        self.agents: dict[str, dict] = {
            FAUCET_ID: {"agent_id": FAUCET_ID, "public_key": FAUCET.key.public_key.hex(), "position": [0, 0, 0],
                        "electricity": FAUCET_BALANCE, "data": FAUCET_BALANCE, "last_nonce": 0,
                        "last_harvest_height": 0},
        }
        self.visible_at: dict[str, float] = {FAUCET_ID: -math.inf}
        self.artifacts: list[tuple[float, dict]] = []
        self.instances: list[tuple[float, dict]] = []
        self.log: list[tuple[str, str, int, str, float]] = []  # (host, signer, nonce, kind, time)
        self.created: list[tuple[str, str, str]] = []  # (host, sponsor, created agent id)
        self.world_rejected: dict[str, int] = {}  # kind -> accepted but rejected by the world rules
        self.posts = 0
        self.busy_answers = 0
        self.premature = 0  # actions from agents not yet visible

    def _now(self) -> float:
        return trio.current_time()

    def height(self) -> int:
        return 1 + max(0, int(self._now() / self.commit_delay_s))

    def visible(self, agent_id: str) -> bool:
        return agent_id in self.agents and self._now() >= self.visible_at[agent_id]

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith("/v1/agents/"):
            agent_id = path.rsplit("/", 1)[1]
            if not self.visible(agent_id):
                return httpx.Response(404, json={
                    "error": f"no agent {agent_id!r}; an existing agent must create it with a create_agent action",
                    "code": "unknown_agent"})
            return httpx.Response(200, json=self.agents[agent_id])
        if path == "/v1/status":
            height = self.height()
            return httpx.Response(200, json={"chain_id": CHAIN, "height": height, "execution_height": height})
        if path == "/v1/modules":
            now = self._now()
            return httpx.Response(
                200,
                json={
                    "artifacts": [a for t, a in self.artifacts if now >= t],
                    "instances": [i for t, i in self.instances if now >= t],
                },
            )
        if path == "/v1/actions":
            return self.post(request)
        return httpx.Response(404, json={"error": "no route"})

    def _world_reject(self, kind: str) -> httpx.Response:
        self.world_rejected[kind] = self.world_rejected.get(kind, 0) + 1
        return httpx.Response(202, json={"status": "accepted", "action_id": f"{self.posts:064x}"})

    def post(self, request: httpx.Request) -> httpx.Response:
        self.posts += 1
        if self.busy_every and self.posts % self.busy_every == 0:
            self.busy_answers += 1
            return httpx.Response(503, json={"error": "mempool full", "retry_after_ms": 50}, headers={"Retry-After": "1"})
        signed = decode_signed_action_json(request.content)
        body = signed.body
        assert body.chain_id == CHAIN
        action = body.action
        kind = type(action).__name__
        self.log.append((request.url.host, body.agent_id, body.nonce, kind, self._now()))
        if not self.visible(body.agent_id):
            self.premature += 1
            return httpx.Response(400, json={
                "error": f"unknown agent {body.agent_id!r}: an existing agent must create it first with create_agent",
                "code": "unknown_agent"})
        agent = self.agents[body.agent_id]
        assert verify_action_signature(signed, bytes.fromhex(agent["public_key"]))
        if body.nonce <= agent["last_nonce"]:
            return httpx.Response(400, json={"error": "nonce used", "code": "nonce_replayed"})
        fee = CREATE_FEE if isinstance(action, CreateAgent) else FEE
        if agent["electricity"] < fee:
            return httpx.Response(400, json={"error": "cannot pay the fee", "code": "insufficient_fee"})
        agent["last_nonce"] = body.nonce
        agent["electricity"] -= fee
        if isinstance(action, CreateAgent):
            if action.agent_id in self.agents:
                return self._world_reject(kind)
            if agent["electricity"] < action.electricity or agent["data"] < action.data:
                return self._world_reject(kind)
            agent["electricity"] -= action.electricity
            agent["data"] -= action.data
            self.agents[action.agent_id] = {
                "agent_id": action.agent_id,
                "public_key": action.public_key.hex(),
                "position": list(action.position),
                "electricity": action.electricity,
                "data": action.data,
                "last_nonce": 0,
                "last_harvest_height": 0,
            }
            self.visible_at[action.agent_id] = self._now() + self.commit_delay_s
            self.created.append((request.url.host, body.agent_id, action.agent_id))
        elif isinstance(action, MoveAgent):
            cost = sum(abs(a - b) for a, b in zip(action.to, agent["position"], strict=True))
            if cost <= agent["electricity"]:
                agent["electricity"] -= cost
                agent["position"] = list(action.to)
        elif isinstance(action, HarvestRadiation):
            last = agent["last_harvest_height"]
            if last and self.height() < last + PARAMS.harvest_interval:
                return self._world_reject(kind)
            agent["electricity"] += 5
            agent["last_harvest_height"] = self.height()
        elif isinstance(action, TransferResource):
            if action.to not in self.agents:
                return httpx.Response(400, json={"error": "no such agent", "code": "unknown_recipient"})
            if agent[action.kind] >= action.amount:
                agent[action.kind] -= action.amount
                self.agents[action.to][action.kind] += action.amount
        elif isinstance(action, CompileModuleArtifactFromSource):
            manifest = json.loads(action.source_package.files[action.source_package.manifest_path])
            self.artifacts.append(
                (
                    self._now() + self.commit_delay_s,
                    {"wasm_hash": hash_of(manifest["version"]), "module_id": manifest["module_id"],
                     "version": manifest["version"], "publisher": body.agent_id},
                )
            )
        elif isinstance(action, InstallModuleFromArtifact):
            self.instances.append(
                (
                    self._now() + self.commit_delay_s,
                    {"instance_id": f"move_counter@{body.agent_id}", "module_id": "move_counter",
                     "wasm_hash": action.wasm_hash, "owner_agent_id": body.agent_id},
                )
            )
        elif isinstance(action, UpgradeModuleFromArtifact):
            for _, instance in self.instances:
                if instance["instance_id"] == action.instance_id and instance["owner_agent_id"] == body.agent_id:
                    instance["wasm_hash"] = action.wasm_hash
        return httpx.Response(202, json={"status": "accepted", "action_id": f"{self.posts:064x}"})


def hash_of(version: str) -> str:
    """The fake wasm_hash of the move_counter artifact at ``version``."""
    return {"0.1.0": "be" * 32, "0.2.0": "ef" * 32}.get(version, "00" * 32)


@pytest.fixture
def modules_dir(tmp_path):
    d = tmp_path / "modules"
    d.mkdir()
    (d / "move_counter.wat").write_text("(module)")
    (d / "move_counter.manifest.json").write_text(json.dumps({"module_id": "move_counter", "version": "0.1.0"}))
    (d / "move_counter_v2.wat").write_text("(module) ;; v2")
    (d / "move_counter_v2.manifest.json").write_text(json.dumps({"module_id": "move_counter", "version": "0.2.0"}))
    return d


URLS = ["http://n0:1", "http://n1:1", "http://n2:1"]


def run_for(cluster: FakeCluster, seconds: float, stats: WorkloadStats, **kwargs) -> float:
    """Run the workload for ``seconds`` of virtual time (sponsored by the faucet unless ``sponsor``
    is given); return the virtual start time."""
    kwargs.setdefault("sponsor", FAUCET)
    start = []

    async def main():
        stop = trio.Event()
        start.append(trio.current_time())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: run_workload(URLS, CHAIN, stop=stop, stats=stats, transport=httpx.MockTransport(cluster.handler), **kwargs)
            )
            await trio.sleep(seconds)
            stop.set()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return start[0]


def test_the_sponsor_creates_the_agents_then_they_act_with_increasing_nonces_and_builder_installs(
        tmp_path, modules_dir):
    cluster = FakeCluster()
    stats = WorkloadStats()
    run_for(cluster, 40.0, stats, agents=20, seed=7, key_dir=tmp_path / "keys", modules_dir=modules_dir)

    ids = [agent_id_for(7, i) for i in range(20)]
    assert set(cluster.agents) == set(ids) | {FAUCET_ID}
    assert stats.agents_registered == 20
    assert cluster.premature == 0  # nobody acted before its creation was visible
    # The faucet signed every creation, once per agent, and gave each agent the endowment.
    assert sorted(created for _, _, created in cluster.created) == sorted(ids)
    assert {sponsor for _, sponsor, _ in cluster.created} == {FAUCET_ID}
    assert "CreateAgent" not in cluster.world_rejected
    assert stats.by_kind["create_agent"] == 20
    electricity, data = DEFAULT_ENDOWMENT
    faucet = cluster.agents[FAUCET_ID]
    assert faucet["electricity"] == FAUCET_BALANCE - 20 * (CREATE_FEE + electricity)
    assert faucet["data"] == FAUCET_BALANCE - 20 * data
    # Round robin: agent i always talks to node i % 3. The sponsor's actions all go through the
    # first node, so that they reach the chain in nonce order (a later nonce committed first would
    # make the earlier ones replays).
    for host, agent, *_ in cluster.log:
        assert host == ("n0" if agent == FAUCET_ID else f"n{ids.index(agent) % 3}")
    assert {host for host, *_ in cluster.created} == {"n0"}
    # Nonces strictly increase per signer (the faucet included), in submission order, and start at 1.
    by_agent: dict[str, list[int]] = {}
    for _, agent, nonce, _, _ in cluster.log:
        by_agent.setdefault(agent, []).append(nonce)
    for agent, nonces in by_agent.items():
        assert nonces[0] == 1, agent
        assert all(b > a for a, b in zip(nonces, nonces[1:], strict=False)), agent
    # The builder compiled the example, installed the artifact it published, compiled version 2
    # and upgraded its instance to it.
    kinds0 = [k for _, a, _, k, _ in cluster.log if a == ids[0]]
    assert kinds0.count("CompileModuleArtifactFromSource") == 2 and kinds0.count("InstallModuleFromArtifact") == 1
    first_compile = kinds0.index("CompileModuleArtifactFromSource")
    install = kinds0.index("InstallModuleFromArtifact")
    second_compile = kinds0.index("CompileModuleArtifactFromSource", install)
    assert first_compile < install < second_compile < kinds0.index("UpgradeModuleFromArtifact")
    assert kinds0.count("UpgradeModuleFromArtifact") == 1
    assert stats.module_installed and stats.module_wasm_hash == "be" * 32 and stats.module_error is None
    assert stats.module_upgraded and stats.module_upgraded_wasm_hash == "ef" * 32
    assert [i["wasm_hash"] for _, i in cluster.instances] == ["ef" * 32]
    # Every agent moved, and the mix includes harvests and transfers.
    kinds = {k for *_, k, _ in cluster.log}
    assert {"CreateAgent", "MoveAgent", "HarvestRadiation", "TransferResource"} <= kinds
    # No agent harvested before its harvest interval had passed.
    assert "HarvestRadiation" not in cluster.world_rejected
    # Counters add up: every POST that reached the action handler is one submission outcome; at
    # most one submission per agent was still in flight (waiting out a 503) when the run stopped.
    outcomes = stats.accepted + stats.duplicate + stats.rejected_total
    assert outcomes == len(cluster.log)
    assert outcomes + stats.busy <= stats.submitted <= outcomes + stats.busy + 20
    assert stats.retried_503 == cluster.busy_answers > 0
    assert stats.unreachable == 0
    # Pacing: at 20 actions/s (plus a burst of 5) over 40 virtual seconds.
    assert len(cluster.log) <= 20 * 40 + 5 + cluster.busy_answers
    assert len(cluster.log) >= 20 * 40 * 0.5


def test_rate_limits_total_submissions(tmp_path, modules_dir):
    cluster = FakeCluster(busy_every=0)
    stats = WorkloadStats()
    run_for(cluster, 30.0, stats, agents=20, seed=1, key_dir=tmp_path / "keys", modules_dir=modules_dir, actions_per_s=5.0)
    assert stats.submitted <= 5 * 30 + 5
    assert stats.submitted >= 5 * 30 * 0.8
    times = [t for *_, t in cluster.log]
    window = [t for t in times if times[0] + 10 <= t < times[0] + 20]
    assert len(window) <= 5 * 10 + 1


def test_rejections_are_counted_not_raised(tmp_path, modules_dir, monkeypatch):
    cluster = FakeCluster(busy_every=0)
    real = cluster.post

    def post(request):
        signed = decode_signed_action_json(request.content)
        if isinstance(signed.body.action, HarvestRadiation):
            cluster.posts += 1
            cluster.log.append((request.url.host, signed.body.agent_id, signed.body.nonce, "HarvestRadiation", trio.current_time()))
            return httpx.Response(400, json={"error": "no radiation here", "code": "no_radiation"})
        return real(request)

    cluster.post = post
    stats = WorkloadStats()
    run_for(cluster, 30.0, stats, agents=5, seed=3, key_dir=tmp_path / "keys", modules_dir=modules_dir)
    assert stats.rejected.get("no_radiation", 0) > 0
    assert stats.rejected["no_radiation"] == sum(1 for *_, k, _ in cluster.log if k == "HarvestRadiation")
    assert stats.agents_registered == 5


def test_without_a_sponsor_missing_agents_are_counted_and_do_not_act(tmp_path, modules_dir):
    cluster = FakeCluster(busy_every=0)
    stats = WorkloadStats()
    run_for(cluster, 10.0, stats, agents=3, seed=0, key_dir=tmp_path / "keys", modules_dir=modules_dir, sponsor=None)
    assert stats.rejected == {"no_sponsor": 3} and stats.agents_registered == 0
    assert cluster.log == [] and set(cluster.agents) == {FAUCET_ID}


def test_a_sponsor_that_cannot_pay_creates_nobody_and_the_refusals_are_counted(tmp_path, modules_dir):
    cluster = FakeCluster(busy_every=0)
    cluster.agents[FAUCET_ID]["electricity"] = CREATE_FEE - 1
    stats = WorkloadStats()
    run_for(cluster, 10.0, stats, agents=2, seed=0, key_dir=tmp_path / "keys", modules_dir=modules_dir)
    assert stats.rejected.get("insufficient_fee", 0) > 0 and stats.agents_registered == 0
    assert cluster.created == [] and all(a == FAUCET_ID for _, a, *_ in cluster.log)


def test_second_run_reuses_keys_and_continues_nonces(tmp_path, modules_dir):
    cluster = FakeCluster(busy_every=0)
    keys = tmp_path / "keys"
    run_for(cluster, 15.0, WorkloadStats(), agents=4, seed=2, key_dir=keys, modules_dir=modules_dir)
    first = {a: max((n for _, b, n, _, _ in cluster.log if b == a), default=0) for a in cluster.agents}
    files = sorted(p.name for p in keys.iterdir())
    assert files == [f"{agent_id_for(2, i)}.json" for i in range(4)]
    n_logged = len(cluster.log)
    # A new trio.run restarts the virtual clock at 0: everything from run 1 is committed by now.
    cluster.visible_at = {a: -math.inf for a in cluster.visible_at}
    cluster.artifacts = [(-math.inf, a) for _, a in cluster.artifacts]
    cluster.instances = [(-math.inf, i) for _, i in cluster.instances]
    stats = WorkloadStats()
    run_for(cluster, 10.0, stats, agents=4, seed=2, key_dir=keys, modules_dir=modules_dir)
    second = cluster.log[n_logged:]
    # the agents exist: the faucet creates nobody and signs nothing
    assert second and all(a != FAUCET_ID and k != "CreateAgent" for _, a, _, k, _ in second)
    # run 1 got as far as the upgrade: run 2 repeats none of the module steps
    assert [i["wasm_hash"] for _, i in cluster.instances] == ["ef" * 32]
    module_kinds = ("CompileModuleArtifactFromSource", "InstallModuleFromArtifact", "UpgradeModuleFromArtifact")
    assert all(k not in module_kinds for *_, k, _ in second)
    for _, agent, nonce, _, _ in second:
        assert nonce > first[agent]
    assert "nonce_replayed" not in stats.rejected
    assert stats.module_installed and stats.agents_registered == 4


def test_an_agent_whose_id_another_key_holds_moves_to_a_free_id(tmp_path, modules_dir):
    cluster = FakeCluster(busy_every=0)
    taken = agent_id_for(0, 1)
    cluster.agents[taken] = {"agent_id": taken, "public_key": "00" * 32, "position": [0, 0, 0], "electricity": 1, "data": 0, "last_nonce": 5}
    cluster.visible_at[taken] = -math.inf
    stats = WorkloadStats()
    run_for(cluster, 10.0, stats, agents=3, seed=0, key_dir=tmp_path / "keys", modules_dir=modules_dir)
    assert stats.rejected.get("agent_id_taken") == 1
    assert all(a != taken for _, a, *_ in cluster.log)  # never signs as the other key's agent
    created = {c for *_, c in cluster.created}
    assert taken not in created and f"{taken}-r1" in created
    assert stats.agents_registered == 3 and (tmp_path / "keys" / f"{taken}-r1.json").exists()
    assert any(a == f"{taken}-r1" for _, a, *_ in cluster.log)  # and acts under its new id


def test_missing_module_source_is_recorded_and_the_builder_keeps_acting(tmp_path):
    cluster = FakeCluster(busy_every=0)
    stats = WorkloadStats()
    run_for(cluster, 10.0, stats, agents=2, seed=0, key_dir=tmp_path / "keys", modules_dir=tmp_path / "nowhere")
    assert not stats.module_installed and "cannot read module source" in (stats.module_error or "")
    builder = agent_id_for(0, 0)
    assert any(a == builder and k == "MoveAgent" for _, a, _, k, _ in cluster.log)


def test_unreachable_nodes_are_counted(tmp_path, modules_dir):
    def handler(request):
        raise httpx.ConnectError("refused", request=request)

    stats = WorkloadStats()

    async def main():
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: run_workload(
                    URLS, CHAIN, agents=3, key_dir=tmp_path / "k", stop=stop, stats=stats,
                    modules_dir=modules_dir, transport=httpx.MockTransport(handler),
                )
            )
            await trio.sleep(20)
            stop.set()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert stats.unreachable > 0 and stats.accepted == 0 and stats.agents_registered == 0


def test_pacer_spaces_slots_and_does_not_burst_after_idle():
    times = []

    async def main():
        pacer = Pacer(10.0, burst=2)
        for _ in range(5):
            await pacer.wait()
            times.append(trio.current_time())
        await trio.sleep(100)
        for _ in range(4):
            await pacer.wait()
            times.append(trio.current_time())

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps[:4] == pytest.approx([0.1] * 4)
    assert gaps[5:] == pytest.approx([0.1] * 3)


def test_find_artifact_and_instance_match_module_version_and_owner():
    modules = {
        "artifacts": [
            {"wasm_hash": "11", "module_id": "other", "version": "1", "publisher": "a"},
            {"wasm_hash": "22", "module_id": "move_counter", "version": "1", "publisher": "someone"},
            {"wasm_hash": "33", "module_id": "move_counter", "version": "1", "publisher": "a"},
            {"wasm_hash": "44", "module_id": "move_counter", "version": "2", "publisher": "a"},
        ],
        "instances": [{"instance_id": "move_counter@b", "module_id": "move_counter", "wasm_hash": "33", "owner_agent_id": "b"}],
    }
    assert find_artifact(modules, "move_counter", "1", "a") == "33"
    assert find_artifact(modules, "move_counter", "2", "a") == "44"
    assert find_artifact(modules, "move_counter", "1", "z") is None
    assert find_instance(modules, "move_counter", "a") is None
    assert find_instance(modules, "move_counter", "b")["wasm_hash"] == "33"


def test_bad_arguments(tmp_path):
    async def go(**kw):
        await run_workload(stop=trio.Event(), stats=WorkloadStats(), key_dir=tmp_path, chain_id=CHAIN, **kw)

    with pytest.raises(ValueError, match="at least one node"):
        trio.run(lambda: go(rpc_urls=[]))
    with pytest.raises(ValueError, match="agents must be"):
        trio.run(lambda: go(rpc_urls=URLS, agents=0))


def test_server_errors_are_counted_not_raised(tmp_path, modules_dir):
    cluster = FakeCluster(busy_every=0)
    real = cluster.handler

    def handler(request):
        if request.method == "POST" and cluster.posts % 4 == 3:
            cluster.posts += 1
            return httpx.Response(500, text="Internal Server Error")
        return real(request)

    cluster.handler = handler  # run_for passes cluster.handler to the transport
    stats = WorkloadStats()
    run_for(cluster, 15.0, stats, agents=4, seed=0, key_dir=tmp_path / "keys", modules_dir=modules_dir)
    assert stats.bad_responses > 0 and stats.accepted > 0 and stats.agents_registered == 4
