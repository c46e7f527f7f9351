"""``storage.retain_blocks``: a node keeps its last N heights (never fewer than a restart needs),
deletes older blocks and execution records, answers 410 ``pruned`` for them, and restarts from its
snapshot to the same roots. Real in-process nodes on 127.0.0.1; every wait is bounded."""

from __future__ import annotations

import httpx
import pytest
import trio

from agent_world_node import config as cfg
from agent_world_node.execution import PRUNE_EVERY_HEIGHTS

from .node_harness import running_node, single_validator_home

RUN_LIMIT_S = 60
RETAIN = 15
SNAPSHOT_EVERY = 25  # not a multiple of PRUNE_EVERY_HEIGHTS: the snapshot bound then matters


def _home(tmp_path, retain: int) -> cfg.Home:
    home = single_validator_home(tmp_path / "solo", chain_id="prune", timeout_commit_ms=10)
    c = cfg.read_config(home.config_file)
    c.storage.retain_blocks = retain
    c.storage.snapshot_interval = SNAPSHOT_EVERY
    cfg.write_config(home.config_file, c)
    return home


async def _run_to(home: cfg.Home, height: int) -> tuple[int, int, bytes, dict[int, int]]:
    """Run the node until ``height``; return (its height, the lowest stored block height, its state
    root, the status codes of GET /v1/blocks/{h} for h = 1 and the tip)."""
    async with running_node(home) as node:
        while node.height < height:
            await trio.sleep(0.02)
        tip = node.height
        root = node.replica.driver.state_root_at(tip)
        async with httpx.AsyncClient(base_url=f"http://{node.config.rpc.listen}", timeout=10) as c:
            codes = {h: (await c.get(f"/v1/blocks/{h}")).status_code for h in (1, tip)}
            r = await c.get("/v1/execution/1")
            codes[-1] = r.status_code
            if r.status_code == 410:
                assert r.json()["code"] == "pruned" and "keeps heights" in r.json()["error"]
        assert root is not None
        return tip, node.replica.store.first_block_height(), root, codes


@pytest.mark.parametrize("retain", [RETAIN, 3])  # with 3, the snapshot's height is the bound
def test_retain_blocks_bounds_the_store_and_a_restart_keeps_the_roots(tmp_path, retain):
    home = _home(tmp_path, retain)

    async def main() -> None:
        with trio.fail_after(RUN_LIMIT_S):
            tip, first, root, codes = await _run_to(home, 80)
            # the last RETAIN heights at least, never above the snapshot a restart starts from
            assert tip - first + 1 >= retain
            assert tip - first + 1 <= retain + SNAPSHOT_EVERY + PRUNE_EVERY_HEIGHTS, (tip, first)
            assert codes == {1: 410, tip: 200, -1: 410}
            # restart: the snapshot and the retained blocks restore the same world and go on
            async with running_node(home) as node:
                assert node.replica.driver.last_height >= tip
                assert node.replica.driver.state_root_at(tip) == root
                while node.height < tip + 20:
                    await trio.sleep(0.02)
                assert node.replica.store.first_block_height() > first  # pruning goes on

    trio.run(main)


def test_without_retain_blocks_every_block_is_kept(tmp_path):
    home = _home(tmp_path, 0)

    async def main() -> None:
        with trio.fail_after(RUN_LIMIT_S):
            _, first, _, codes = await _run_to(home, 40)
            assert first == 1 and codes[1] == 200 and codes[-1] == 200

    trio.run(main)


def test_retain_blocks_is_validated():
    with pytest.raises(ValueError, match="retain_blocks"):
        cfg.StorageConfig(retain_blocks=-1)


def _store_bytes(home: cfg.Home) -> int:
    return sum(f.stat().st_size for f in home.data_dir.glob("node.sqlite3*"))


def test_with_retain_blocks_the_store_stops_growing(tmp_path):
    """A long run: with retain_blocks the database (file and its log) is no larger after 400 more
    heights than after the first 200, since freed pages are reused; without it, it grows."""

    async def sizes(home: cfg.Home) -> tuple[int, int]:
        async with running_node(home) as node:
            while node.height < 200:
                await trio.sleep(0.02)
            early = _store_bytes(home)
            while node.height < 600:
                await trio.sleep(0.02)
            return early, _store_bytes(home)

    async def main() -> None:
        with trio.fail_after(3 * RUN_LIMIT_S):
            pruned_early, pruned_late = await sizes(_home(tmp_path / "pruned", RETAIN))
            kept_early, kept_late = await sizes(_home(tmp_path / "kept", 0))
            print(f"\nstore bytes at heights 200 -> 600: retain_blocks={RETAIN}: {pruned_early} -> {pruned_late}; "
                  f"all kept: {kept_early} -> {kept_late}")
            assert kept_late > kept_early + 200 * 512  # the measure sees growth: 400 blocks of >= 512 bytes
            assert pruned_late <= pruned_early + 64 * 1024, (pruned_early, pruned_late)

    trio.run(main)
