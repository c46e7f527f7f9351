"""The metrics a real (single-validator, in-process) node exposes at ``/metrics``: every metric name
the README and docs mention exists under that name, counters end in ``_total``, no ``_created``
series, process metrics, ``awnode_build_info`` and the world's module-call counters."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import trio

from agent_world_client.client import NodeClient
from agent_world_runtime import compute_action_id
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.signer import AgentSigner

from .node_harness import bank_signer, running_node, single_validator_home

ROOT = Path(__file__).resolve().parent.parent


def documented_metric_names() -> set[str]:
    names: set[str] = set()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        names.update(re.findall(r"\b(awnode_[a-z_]+)", path.read_text()))
    return names


def test_documented_metrics_exist_and_the_exposition_is_clean(tmp_path):
    home = single_validator_home(tmp_path / "solo", chain_id="metrics-test")

    async def main():
        async with running_node(home) as node:
            base = f"http://{node.config.rpc.listen}"
            async with httpx.AsyncClient(base_url=base, timeout=10) as client, NodeClient(base) as api:
                create = bank_signer("metrics-test").create_agent(AgentSigner("alice", SigningKey(b"a" * 32),
                                                                              "metrics-test"), electricity=5)
                await api.submit(create)
                done = await api.wait_action(compute_action_id(create).hex(), timeout_s=30)
                fee = done["fee"]
                with trio.fail_after(30):
                    while node.height < done["height"] + 1:
                        await trio.sleep(0.1)
                return fee, (await client.get("/metrics")).text

    fee, text = trio.run(main)
    fees = re.search(r"^awnode_action_fees_total (\S+)$", text, re.M)
    assert fees and float(fees.group(1)) >= fee > 0, fees
    assert re.search(r'^awnode_module_fees_total\{kind="data"\} ', text, re.M) and "awnode_module_fuel_total" in text
    declared = set(re.findall(r"^# TYPE (\S+) (\S+)", text, re.M))
    types = dict(declared)
    samples = set(re.findall(r"^([a-z_]+)(?:\{|\s)", text, re.M))
    exposed = samples | set(types)
    missing = sorted(n for n in documented_metric_names() if n not in exposed and f"{n}_total" not in samples
                     and n not in types)
    assert not missing, f"the docs name metrics /metrics does not expose: {missing}"
    assert "_created" not in text
    for name, kind in declared:
        if kind == "counter":
            assert not [s for s in samples if s.startswith(name) and not s.endswith("_total")], name
    assert "process_resident_memory_bytes" in samples and "process_cpu_seconds_total" in samples
    assert re.search(r'^awnode_build_info\{.*libp2p="0\.8\.1".*wasmtime="50\.0\.1".*\} 1\.0$', text, re.M)
    assert "awnode_module_calls_total" in samples and "awnode_blocks_committed_total" in samples
    documented = documented_metric_names()
    assert "awnode_execution_mismatches_total" in documented and "awnode_peer_penalties_total" in documented
