"""The gossip benchmark's worker machinery (benchmarks/gossip.py): 2 real worker processes on
loopback, a short low-rate phase, delivery and latency counted, every process stopped."""

from __future__ import annotations

import pytest

from benchmarks.gossip import GossipBenchError, GossipCluster, PhaseResult


@pytest.mark.timeout(90)
def test_two_workers_count_every_delivery(tmp_path):
    with GossipCluster(2, tmp_path) as cluster:
        pids = [w.popen.pid for w in cluster.workers]
        assert len(set(pids)) == 2
        first = cluster.run_phase(10, 200, duration_s=1.5, drain_s=1.0)
        second = cluster.run_phase(10, 300, duration_s=1.0, drain_s=1.0)
    # every worker process has exited
    assert all(w.popen.poll() is not None for w in cluster.workers)

    # 10 msg/s aggregate = 5 msg/s per worker: 8 (1.5 s) then 5 (1.0 s) messages each
    assert (first.published, first.expected) == (16, 16)
    assert (second.published, second.expected) == (10, 10)
    # at 10 msg/s on loopback nothing is lost; each delivery is counted once, in its own phase
    assert first.deliveries == 16 and first.delivery == 1.0
    assert second.deliveries == 10 and second.delivery == 1.0
    for r in (first, second):
        assert isinstance(r, PhaseResult)
        assert r.latency_ms_p50 is not None and r.latency_ms_p99 is not None
        assert 0 < r.latency_ms_p50 <= r.latency_ms_p99
        assert r.achieved_msgs_per_s > 0
        assert r.dropped.get("rate_limited", 0) == 0


def test_cluster_needs_two_processes(tmp_path):
    with pytest.raises(ValueError, match="at least 2"):
        GossipCluster(1, tmp_path)


@pytest.mark.timeout(60)
def test_dead_worker_is_reported_not_hung(tmp_path):
    with GossipCluster(2, tmp_path) as cluster:
        cluster.workers[1].popen.kill()
        cluster.workers[1].popen.wait()
        with pytest.raises(GossipBenchError, match="worker 1"):
            cluster.run_phase(10, 200, duration_s=0.5, drain_s=0.2)
    assert all(w.popen.poll() is not None for w in cluster.workers)
