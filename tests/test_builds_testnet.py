"""Builds from source on a real 4-validator testnet (separate node processes on loopback): the
validators build C and Rust packages off the consensus path and settle them by attestation
(docs/module-abi.md, "Compiling from source").

One testnet (module-scoped fixture) shared by the scenarios, in this order:

1. An agent created by the faucet compiles the Rust SDK example (examples/modules/rust_counter) and
   the C example (examples/modules/c_counter) in-world: module.build_requested, then
   module.build_settled "registered"; every node lists the same artifact and the same build record
   (attestations from at least 3 validators, all the same hash, equal to a local build); both
   modules are installed and a move of the agent calls them (module.called).
2. Heights keep committing while a slow build runs (a C package whose preprocessor expansion takes
   seconds of CPU per validator): the chain advances at least MIN_HEIGHTS_DURING_BUILD heights
   between the request and the settlement. The largest gap between consecutive block timestamps
   during the build is printed, never asserted.
3. Hostile sources (host file includes, __DATE__/__TIME__, a recursive include, a 1 MiB static
   array, Rust include_str! of /etc/passwd) fail with deterministic codes; no event of the journal
   holds the content of /etc/hostname or the first line of /etc/passwd; every node agrees on every
   execution root.
4. A late joiner (add_testnet_node, empty data dir) started after those builds settled syncs the
   chain, agrees on every execution root, and never builds: its /v1/builds/{id} has no
   ``this_node`` and its log has no ``build_started``.

Bounded by trio.fail_after (TOTAL_S for the whole module, startup excluded); every node process is
stopped in a finally; all files under pytest's tmp_path.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import structlog
import trio

from agent_world_client.client import AgentKey, NodeClient, NotFound
from agent_world_node.builds import build_package
from agent_world_node.config import NodeConfig
from agent_world_runtime.actions import (
    CompileModuleArtifactFromSource,
    InstallModuleFromArtifact,
    ModuleSourcePackage,
    MoveAgent,
    SignedAction,
)
from agent_world_runtime.crypto import sha256
from agent_world_runtime.modules.builds import MAX_ATTESTED_WASM_BYTES
from agent_world_runtime.signer import AgentSigner
from agent_world_runtime.world import compute_action_id
from agent_world_tools.testnet import (
    AgreementChecker,
    NodeProcess,
    add_testnet_node,
    faucet_key_file,
    init_testnet,
    load_testnet,
    local_toolchains,
    stop_all,
    wait_until_ready,
)

from .testnet_clients import TestnetClients

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(360)]

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "modules"
TOTAL_S = 300.0  # every scenario of the module together (the nodes' startup excluded)
STEP_S = 90.0  # one wait for an event or a height
VALIDATORS = 4
MIN_HEIGHTS_DURING_BUILD = 10
DETERMINISTIC_FAILURES = {"COMPILE_ERROR", "OUTPUT_TOO_LARGE", "INVALID_PACKAGE"}


@pytest.fixture(autouse=True)
def _quiet_structlog():
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    yield
    structlog.reset_defaults()


# --- source packages --------------------------------------------------------------------------------


def example_package(name: str) -> ModuleSourcePackage:
    """The example module ``examples/modules/<name>`` as a package (its build/ output left out)."""
    directory = EXAMPLES / name
    files = {p.name: p.read_text(encoding="utf-8") for p in sorted(directory.iterdir())
             if p.is_file() and p.suffix in (".c", ".h", ".rs", ".json")}
    return ModuleSourcePackage(manifest_path="manifest.json", files=files)


def manifest_json(module_id: str) -> str:
    """The C example's manifest under another module id."""
    manifest = json.loads((EXAMPLES / "c_counter" / "manifest.json").read_text())
    return json.dumps({**manifest, "module_id": module_id})


C_COUNTER = (EXAMPLES / "c_counter" / "counter.c").read_text(encoding="utf-8")
SLOW_FILES = 2  # translation units, each one expression of 2^21 leaves (about 3 s of CPU each here)
SLOW_DEPTH = 21


def slow_package(module_id: str) -> ModuleSourcePackage:
    """The C counter plus SLOW_FILES translation units, each returning a constant expression that
    the preprocessor expands to 2^SLOW_DEPTH terms: a valid module (a few KiB) whose build costs
    seconds of CPU and well under a GiB of memory per compiler process."""
    files = {"counter.c": C_COUNTER, "manifest.json": manifest_json(module_id)}
    for k in range(SLOW_FILES):
        defines = f"#define A0 {k + 1}u\n" + "".join(f"#define A{i + 1} (A{i} + A{i} * 3u)\n" for i in range(SLOW_DEPTH))
        files[f"slow{k}.c"] = defines + (
            f'__attribute__((export_name("slow{k}"))) unsigned slow{k}(void) {{ return A{SLOW_DEPTH}; }}\n')
    return ModuleSourcePackage(manifest_path="manifest.json", files=files)


BIG_ARRAY = ('static volatile unsigned char big[1 << 20] = {1};\n'
             '__attribute__((export_name("big"))) int peek(int i) { return big[i]; }\n')

HOSTILE = [  # (module_id, source files without the manifest, the code every validator must agree on)
    ("h_include_hostname", {"m.c": C_COUNTER + '#include "/etc/hostname"\n'}, "INVALID_PACKAGE"),
    ("h_macro_hostname", {"m.c": '#define P "/etc/hostname"\n#include P\n' + C_COUNTER}, "INVALID_PACKAGE"),
    ("h_date", {"m.c": C_COUNTER + "const char *built_on = __DATE__;\n"}, "COMPILE_ERROR"),
    ("h_time", {"m.c": C_COUNTER + "const char *built_at = __TIME__;\n"}, "COMPILE_ERROR"),
    ("h_recursive", {"m.c": C_COUNTER + '#include "loop.h"\n', "loop.h": '#include "loop.h"\n'}, "COMPILE_ERROR"),
    ("h_big_array", {"m.c": C_COUNTER + BIG_ARRAY}, "OUTPUT_TOO_LARGE"),
    ("h_include_str", {"lib.rs": 'pub static PASSWD: &str = include_str!("/etc/passwd");\n'}, "INVALID_PACKAGE"),
]


def host_secrets() -> dict[str, str]:
    """Host file contents that must never reach an event, as they would appear in JSON text."""
    secrets: dict[str, str] = {}
    hostname = Path("/etc/hostname")
    if hostname.exists():
        text = hostname.read_text(errors="replace")
        if text.strip():
            # the whole file (with its newline) as JSON text; the bare name too when it is not short
            secrets["/etc/hostname"] = json.dumps(text)[1:-1]
            if len(text.strip()) >= 6:
                secrets["/etc/hostname (name)"] = text.strip()
    passwd = Path("/etc/passwd")
    if passwd.exists():
        first = passwd.read_text(errors="replace").splitlines()[0]
        if first.strip():
            secrets["/etc/passwd line 1"] = first
    return secrets


# --- the shared testnet -----------------------------------------------------------------------------


@dataclass
class Testnet:
    directory: Path
    nodes: list
    procs: list[NodeProcess]
    faucet: AgentSigner
    deadline: float  # time.monotonic() by which every scenario must be done
    settled: dict[str, dict] = field(default_factory=dict)  # build id -> its module.build_settled event
    extra: list[NodeProcess] = field(default_factory=list)  # late joiners

    __test__ = False

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"the module's {TOTAL_S:g} s budget is used up")
        return left


def _quick_commits(i: int) -> NodeConfig:
    """Node config with a 50 ms commit wait: the heights counted during a slow build are what
    shows the chain kept committing, and the default 500 ms wait makes them few and noisy."""
    config = NodeConfig()
    config.consensus.timeout_commit_ms = 50
    return config


@pytest.fixture(scope="module")
def testnet(tmp_path_factory):
    names = {t.name for t in local_toolchains()}
    if not {"c", "rust"} <= names:
        pytest.skip(f"needs the C and Rust module toolchains installed (have {sorted(names)}); see make test")
    directory = tmp_path_factory.mktemp("builds") / "tn"
    init_testnet(directory, VALIDATORS, config=_quick_commits)
    nodes = load_testnet(directory)
    procs = [NodeProcess(n) for n in nodes]
    net = None
    try:
        for p in procs:
            p.start()
        trio.run(lambda: wait_until_ready(nodes, procs, timeout_s=90))
        key = AgentKey.load(faucet_key_file(directory))
        net = Testnet(directory, nodes, procs, AgentSigner("faucet", key.key, nodes[0].chain_id),
                      deadline=time.monotonic() + TOTAL_S)
        yield net
    finally:
        codes = stop_all(procs + (net.extra if net else []), grace_s=15)
        print(f"\nnode exit statuses: {codes}")


def run(testnet: Testnet, scenario, *args) -> None:
    """Run ``scenario(net, *args)`` (async) against the testnet's nodes within the module budget."""

    async def main():
        net = Net(testnet)
        try:
            with trio.fail_after(testnet.remaining()):
                await scenario(net, *args)
        finally:
            with trio.CancelScope(shield=True):
                await net.aclose()

    trio.run(main)


class Net(TestnetClients):
    """Clients of the testnet's nodes and the waits the scenarios need."""

    def __init__(self, testnet: Testnet, nodes=None, procs=None):
        super().__init__(nodes or testnet.nodes, procs or testnet.procs, STEP_S)
        self.testnet = testnet
        self.http = {n.name: httpx.AsyncClient(base_url=n.rpc_url, timeout=10.0) for n in self.nodes}
        self.chain_id = self.nodes[0].chain_id

    async def events(self, kind: str | None = None, client: NodeClient | None = None) -> list[dict]:
        """Every journal event of node0 (or ``client``) whose kind starts with ``kind`` (all if None)."""
        client = client or self.first
        out: list[dict] = []
        seq = 0
        while True:
            batch = await client.events(seq, 1000, kind)
            out.extend(batch)
            if len(batch) < 1000:
                return out
            seq = batch[-1]["seq"] + 1

    async def events_for(self, kind: str, build_ids: set[str]) -> dict[str, dict] | None:
        """node0's ``kind`` event of every build in ``build_ids``, or None while one is missing."""
        found = {e["data"]["build_id"]: e for e in await self.events(kind) if e["data"].get("build_id") in build_ids}
        return found if set(found) == build_ids else None

    async def wait_settled(self, build_ids: set[str], timeout_s: float = STEP_S) -> dict[str, dict]:
        """Wait for module.build_settled of every build in ``build_ids`` on node0, then for every node
        to execute its height; return the events by build id."""
        settled = await self.until(lambda: self.events_for("module.build_settled", build_ids),
                                   f"module.build_settled of {sorted(build_ids)}", timeout_s)
        await self.wait_exec_height(max(e["height"] for e in settled.values()))
        self.testnet.settled.update(settled)
        return settled

    async def build_doc(self, name: str, build_id: str) -> dict:
        response = await self.http[name].get(f"/v1/builds/{build_id}")
        assert response.status_code == 200, (name, build_id, response.status_code, response.text)
        return response.json()

    async def build_docs(self, build_id: str) -> dict[str, dict]:
        return {name: await self.build_doc(name, build_id) for name in self.clients}

    async def wait_nonce(self, agent_id: str, nonce: int) -> None:
        async def done():
            try:
                records = [await c.agent(agent_id) for c in self.clients.values()]
            except NotFound:
                return None
            return all(r["last_nonce"] >= nonce for r in records)

        await self.until(done, f"{agent_id}'s nonce {nonce} to commit on every node")

    async def new_agent(self, name: str, electricity: int = 10_000_000, data: int = 10_000_000) -> AgentSigner:
        """An agent created (and paid for) by the faucet, committed on every node."""
        agent = AgentSigner.from_seed(name, os.urandom(32), self.chain_id)
        faucet = self.testnet.faucet
        await self.submit_all(0, [faucet.create_agent(agent, electricity=electricity, data=data)])
        await self.wait_nonce("faucet", faucet.next_nonce - 1)
        return agent

    async def agree_on_all_heights(self) -> int:
        """Check that every node reports the same execution_state_root at every height 1..h that
        all executed; return h."""
        common = min((await self.exec_heights()).values())
        checker = AgreementChecker(self.clients)
        assert await checker.check_up_to(common), f"execution state roots differ: {checker.mismatch}"
        assert checker.checked_up_to == common, checker.last_error
        return common

    async def aclose(self) -> None:
        await super().aclose()
        for h in self.http.values():
            await h.aclose()


def build_id_of(signed: SignedAction) -> str:
    return compute_action_id(signed).hex()


def compile_action(agent: AgentSigner, module_id: str, package: ModuleSourcePackage) -> SignedAction:
    return agent.sign(CompileModuleArtifactFromSource(module_id=module_id, source_package=package))


async def check_build_everywhere(net: Net, build_id: str, status: str, code: str, wasm_hash: str = "") -> dict:
    """Every node's /v1/builds/{build_id} shows the same world record with ``status``, ``code`` and
    ``wasm_hash``, attested by at least 3 validators (all saying the same outcome); a validator's own
    report, when it has one, has that outcome. Returns node0's document."""
    docs = await net.build_docs(build_id)
    outcome = wasm_hash if code == "OK" else f"code:{code}"
    validators = {(await c.status())["validator"] for c in net.clients.values()}
    world = {name: {k: v for k, v in d.items() if k != "this_node"} for name, d in docs.items()}
    first = next(iter(world.values()))
    assert all(w == first for w in world.values()), world
    assert (first["status"], first["code"], first["wasm_hash"]) == (status, code, wasm_hash), first
    attestations = first["attestations"]
    assert len(attestations) >= 3 and set(attestations) <= validators, attestations
    assert set(attestations.values()) == {outcome}, attestations
    for name, doc in docs.items():
        mine = doc.get("this_node")
        if mine is not None:
            assert mine["code"] == code and mine.get("wasm_hash", "") == wasm_hash, (name, mine)
    return docs[net.nodes[0].name]


# --- 1. the examples, built by the validators ----------------------------------------------------------


async def examples_scenario(net: Net) -> None:
    builder = await net.new_agent("builder")
    compiles = {
        "rust_counter": compile_action(builder, "rust_counter", example_package("rust_counter")),
        "c_counter": compile_action(builder, "c_counter", example_package("c_counter")),
    }
    ids = {m: build_id_of(s) for m, s in compiles.items()}
    # one agent's actions go to one node, in nonce order (a later nonce committed first voids an earlier one)
    await net.submit_all(1, list(compiles.values()))
    requested = await net.until(lambda: net.events_for("module.build_requested", set(ids.values())),
                                "module.build_requested of both examples")
    for module_id, toolchain in (("rust_counter", "rust"), ("c_counter", "c")):
        data = requested[ids[module_id]]["data"]
        assert (data["module_id"], data["toolchain"], data["agent_id"]) == (module_id, toolchain, "builder"), data
    settled = await net.wait_settled(set(ids.values()))

    hashes: dict[str, str] = {}
    for module_id, toolchain in (("rust_counter", "rust"), ("c_counter", "c")):
        data = settled[ids[module_id]]["data"]
        assert (data["status"], data["code"], data["module_id"]) == ("registered", "OK", module_id), data
        wasm_hash = hashes[module_id] = data["wasm_hash"]
        local = build_package(dict(example_package(module_id).files), toolchain)
        assert local.ok and sha256(local.wasm).hex() == wasm_hash, (module_id, local.code, local.message[:500])
        await check_build_everywhere(net, ids[module_id], "registered", "OK", wasm_hash)
        for name, c in net.clients.items():
            artifacts = [a for a in (await c.modules())["artifacts"] if a["module_id"] == module_id]
            assert [(a["wasm_hash"], a["publisher"]) for a in artifacts] == [(wasm_hash, "builder")], (name, artifacts)
        print(f"\n{module_id}: build {ids[module_id][:16]} requested at height {requested[ids[module_id]]['height']}, "
              f"registered at {settled[ids[module_id]]['height']} as {wasm_hash[:16]} ({data['attestations']} attestations)")

    instances = {m: f"{m}@builder" for m in hashes}
    actions = [builder.sign(InstallModuleFromArtifact(wasm_hash=hashes[m], instance_id=instances[m])) for m in hashes]
    actions.append(builder.sign(MoveAgent(to=(1, 0, 0))))
    await net.submit_all(3, actions)
    await net.wait_nonce("builder", builder.next_nonce - 1)

    async def called():
        found = {e["data"]["instance_id"] for e in await net.events("module.called")}
        return set(instances.values()) <= found

    await net.until(called, "module.called of both compiled modules")
    emitted = [e for e in await net.events("module.emitted") if e["data"]["instance_id"] in instances.values()]
    assert {e["data"]["kind"] for e in emitted} == {"counter.moved"}, emitted
    assert len(emitted) == 2, emitted


def test_validators_build_the_rust_and_c_examples(testnet):
    run(testnet, examples_scenario)


# --- 2. the chain keeps committing while a slow build runs --------------------------------------------


async def slow_scenario(net: Net) -> None:
    slowpoke = await net.new_agent("slowpoke")
    signed = compile_action(slowpoke, "slow_c", slow_package("slow_c"))
    build_id = build_id_of(signed)
    started = time.monotonic()
    await net.submit_all(0, [signed])
    requested = (await net.until(lambda: net.events_for("module.build_requested", {build_id}),
                                 "module.build_requested of the slow build"))[build_id]
    seen: list[tuple[float, int]] = []  # (s since submission, node0 height) while the build is pending

    async def settled_yet():
        seen.append((time.monotonic() - started, (await net.first.status())["height"]))
        return await net.events_for("module.build_settled", {build_id})

    event = (await net.until(settled_yet, "module.build_settled of the slow build", timeout_s=200))[build_id]
    observed_s = time.monotonic() - started
    await net.wait_exec_height(event["height"])
    net.testnet.settled[build_id] = event
    lo, hi = requested["height"], event["height"]
    times = {h: (await net.first.block(h))["header"]["timestamp_ms"] for h in range(lo, hi + 1)}
    gaps = [times[h] - times[h - 1] for h in range(lo + 1, hi + 1)]
    load = os.getloadavg()
    print(f"\nslow build {build_id[:16]}: requested at height {lo}, settled at {hi} ({hi - lo} heights, "
          f"{observed_s:.1f} s after submission as seen by the test): {event['data']}")
    print(f"   block timestamp gaps during the build: largest {max(gaps)} ms, median {sorted(gaps)[len(gaps) // 2]} ms; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cpus")
    print(f"   node0 height seen by the test: {seen[:: max(1, len(seen) // 12)]}")

    # every validator's own build finished (none still running into the next scenario)
    async def all_built():
        docs = await net.build_docs(build_id)
        return docs if all("this_node" in d for d in docs.values()) else None

    docs = await net.until(all_built, "every validator's own build of the slow package", timeout_s=150)
    print(f"   each validator's own outcome: {({n: d['this_node']['code'] for n, d in docs.items()})}")
    data = event["data"]
    assert hi - lo >= MIN_HEIGHTS_DURING_BUILD, f"only {hi - lo} heights between the request and the settlement"
    assert data["status"] == "registered" and data["code"] == "OK", (
        f"a build within the builder's limits did not register: {data}; own builds: "
        f"{({n: d['this_node'] for n, d in docs.items()})}")
    await check_build_everywhere(net, build_id, "registered", "OK", data["wasm_hash"])
    await net.agree_on_all_heights()


def test_heights_keep_committing_during_a_slow_build(testnet):
    run(testnet, slow_scenario)


# --- 3. hostile sources ---------------------------------------------------------------------------------


async def hostile_scenario(net: Net) -> None:
    attacker = await net.new_agent("attacker")
    signed = {}
    for module_id, files, _code in HOSTILE:
        package = ModuleSourcePackage(manifest_path="manifest.json",
                                      files={**files, "manifest.json": manifest_json(module_id)})
        signed[module_id] = compile_action(attacker, module_id, package)
    ids = {m: build_id_of(s) for m, s in signed.items()}
    await net.submit_all(1, list(signed.values()))
    await net.until(lambda: net.events_for("module.build_requested", set(ids.values())),
                    "module.build_requested of every hostile package")
    settled = await net.wait_settled(set(ids.values()))
    outcomes = {}
    for module_id, _files, code in HOSTILE:
        data = settled[ids[module_id]]["data"]
        outcomes[module_id] = data["code"]
        assert data["status"] == "failed", (module_id, data)
        assert data["code"] in DETERMINISTIC_FAILURES | {"BUILD_DISAGREEMENT"}, (module_id, data)
        assert data["code"] == code, (module_id, data)
        await check_build_everywhere(net, ids[module_id], "failed", code)
    print(f"\nhostile builds: {outcomes}")
    assert MAX_ATTESTED_WASM_BYTES < (1 << 20)  # the big array cannot fit an attestation

    secrets = host_secrets()
    assert secrets, "no /etc/hostname or /etc/passwd to look for"
    for name, c in net.clients.items():
        journal = await net.events(client=c)
        for e in journal:
            text = json.dumps(e["data"])
            for what, secret in secrets.items():
                assert secret not in text, f"{name}: event {e['kind']} at height {e['height']} holds {what}: {text[:400]}"
    artifacts = [a for a in (await net.first.modules())["artifacts"] if a["module_id"] in ids]
    assert artifacts == [], artifacts
    common = await net.agree_on_all_heights()
    print(f"   no event holds {sorted(secrets)}; roots agree at every height 1..{common}")


def test_hostile_sources_fail_deterministically(testnet):
    run(testnet, hostile_scenario)


# --- 4. a late joiner replays the builds without building -----------------------------------------------


async def late_joiner_scenario(net: Net) -> None:
    if not net.testnet.settled:  # run alone: settle one build first
        await examples_scenario(net)
    testnet = net.testnet
    add_testnet_node(testnet.directory)
    joiner = load_testnet(testnet.directory)[-1]
    assert joiner.name == f"node{VALIDATORS}"
    proc = NodeProcess(joiner)
    testnet.extra.append(proc)
    proc.start()
    await wait_until_ready([joiner], [proc], timeout_s=60)
    everyone = Net(testnet, testnet.nodes + [joiner], testnet.procs + [proc])
    try:
        target = max((await net.exec_heights()).values())
        started = time.monotonic()
        await everyone.wait_exec_height(target)
        print(f"\nlate joiner {joiner.name} executed heights 1..{target} in {time.monotonic() - started:.1f} s")
        common = await everyone.agree_on_all_heights()
        assert common >= target
        validators_modules = await net.first.modules()
        assert (await everyone.clients[joiner.name].modules())["artifacts"] == validators_modules["artifacts"]
        for build_id, event in testnet.settled.items():
            mine = await everyone.build_doc(joiner.name, build_id)
            theirs = await net.build_doc(net.nodes[0].name, build_id)
            assert "this_node" not in mine, mine
            assert mine == {k: v for k, v in theirs.items() if k != "this_node"}, (mine, theirs)
            assert (mine["status"], mine["code"]) == (event["data"]["status"], event["data"]["code"]), mine
        log_text = joiner.log_path.read_text(errors="replace")
        assert "build_started" not in log_text and "build_finished" not in log_text
        assert "build_started" in testnet.nodes[0].log_path.read_text(errors="replace")  # the validators did
        assert not proc.failed(), proc.log_tail(40)
        print(f"   roots agree at every height 1..{common}; {len(testnet.settled)} settled builds replayed, none built")
    finally:
        with trio.CancelScope(shield=True):
            await everyone.aclose()


def test_late_joiner_replays_builds_without_building(testnet):
    run(testnet, late_joiner_scenario)
