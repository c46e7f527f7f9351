"""Raw gossipsub throughput and latency between 4 OS processes on loopback: the network-limit
figures of the libp2p layer alone, without consensus.

Each process (``python -m benchmarks.gossip --worker ...``) is one ``P2PNetwork`` with the node's
libp2p configuration (Noise, yamux, GossipSub 1.1 with the node's degrees and heartbeat; see
``agent_world_node/network/host.py``), its own key and port on 127.0.0.1, and every other process
as a configured peer. One difference from a node: the per-origin, per-topic gossip rate limits
(``p2p.<topic>_rate_limit`` in ``config.toml``, e.g. 200 votes/s) are raised to ``UNLIMITED_RATE``
so that what is measured is gossipsub itself, not the node's misbehaviour policy (which would also
ban a publisher above them).

Method: the parent starts the workers, waits until every one is connected to all others and has
them in its mesh, then runs phases. In a phase every worker publishes ``offered / N`` messages per
second of ``size`` bytes on one topic for ``PHASE_S`` seconds (a fixed count, paced against the
clock; all workers start at the same wall-clock instant), then waits ``DRAIN_S`` for stragglers.
Every payload starts with (phase, sender, sequence number, send time ``time.time()``); each worker
counts the distinct messages of other senders it received in that phase, and the one-way latency
of each (receive time minus send time: one machine, one clock). Delivery = deliveries /
(messages published x (N - 1)). Offered rates rise until delivery drops below ``MIN_DELIVERY``
(99%); after a failed phase the cluster rests ``REST_S`` so its backlog clears.

Figures (``run_all``):
- ``gossip_200B_max_msgs_per_s``: highest offered aggregate rate (messages published per second,
  summed over the 4 publishers) of 200-byte payloads delivered to >= 99% of receivers. Each
  message is delivered 3 times, so deliveries/s are 3x this.
- ``gossip_64KiB_max_msgs_per_s`` and ``gossip_64KiB_max_MB_per_s`` (10^6 bytes published per
  second at that rate; multiply by 3 for bytes delivered).
- ``gossip_200B_latency_ms_p50`` / ``_p99`` at ``LATENCY_RATE_200B`` msg/s, and
  ``gossip_64KiB_latency_ms_p50`` / ``_p99`` at ``LATENCY_RATE_64KIB`` msg/s (the first, moderate
  phase of each size).
- ``gossip_*_achieved_msgs_per_s``: the rate the publishers actually managed at that maximum
  (below the offered rate when publishing itself cannot keep up), and
  ``gossip_*_latency_ms_p50_at_max``: the median latency there (queues build up near the limit).

Run time is bounded (about 60-90 s in all); every worker is stopped (SIGTERM, then SIGKILL) in a
``finally``, also when the parent fails. Run with ``python -m benchmarks.gossip``.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import structlog

ROOT = Path(__file__).resolve().parent.parent
CHAIN_ID = "bench-gossip"
TOPIC = "actions"
PROCESSES = 4
SIZE_SMALL = 200
SIZE_LARGE = 64 * 1024
#: Offered aggregate rates (msg/s over all publishers), tried in order until delivery < 99%.
RATES_200B = (50, 100, 150, 200, 300, 400, 600, 800)
RATES_64KIB = (20, 40, 60, 80, 120, 160, 240)
LATENCY_RATE_200B = RATES_200B[0]
LATENCY_RATE_64KIB = RATES_64KIB[0]
PHASE_S = 4.0
DRAIN_S = 2.0
REST_S = 3.0
MIN_DELIVERY = 0.99
#: Per-origin rate limit given to the workers (the node's default would drop and ban above 150/s).
UNLIMITED_RATE = 1_000_000.0
#: Header at the start of every payload: phase, sender index, sequence number, send time (s).
HEADER = struct.Struct(">IHId")
#: Most latency samples one worker reports per phase (evenly thinned beyond that).
MAX_LATENCY_SAMPLES = 4000
#: How long a worker may take from spawn to "ready" (imports, listen, connect, mesh), seconds.
READY_TIMEOUT_S = 30.0
#: Slack for a worker's report after the phase's report time, seconds.
REPORT_SLACK_S = 15.0

log = structlog.get_logger(__name__)


class GossipBenchError(RuntimeError):
    """A worker failed to start, died, or sent no report in time; the message includes its stderr tail."""


# ----------------------------------------------------------------------------------- worker side


@dataclass
class _PhaseCounts:
    seen: set[tuple[int, int]] = field(default_factory=set)
    latencies_ms: list[float] = field(default_factory=list)
    malformed: int = 0


async def _worker_main(index: int, seed: bytes, port: int, peers: list[str]) -> None:
    """Run one worker: network up, "ready" on the control stream, then obey phase/stop commands
    read as JSON lines on stdin; results go as JSON lines to the control stream (fd 3 duplicated
    from stdout before stdout was pointed at stderr, so library prints cannot corrupt it)."""
    import trio

    from agent_world_node.network import TOPIC_NAMES, NetworkConfig, P2PNetwork

    control = os.fdopen(_CONTROL_FD, "w", buffering=1)

    def send(obj: dict[str, Any]) -> None:
        control.write(json.dumps(obj) + "\n")
        control.flush()

    async def no_blocks(from_height: int, to_height: int) -> list[bytes]:
        return []

    config = NetworkConfig(
        chain_id=CHAIN_ID,
        listen_addr=f"/ip4/127.0.0.1/tcp/{port}",
        peers=peers,
        key_seed=seed,
        topic_rate_limits={topic: (UNLIMITED_RATE, UNLIMITED_RATE) for topic in TOPIC_NAMES},
        actions_queue_size=10_000,  # as deep as the single queue of earlier versions: measure gossip, not the daemon
    )
    net = P2PNetwork(config, no_blocks)
    phases: dict[int, _PhaseCounts] = {}
    others = len(peers)

    async def receive() -> None:
        async for msg in net.incoming:
            now = time.time()
            try:
                phase, sender, seq, sent_at = HEADER.unpack_from(msg.data)
            except struct.error:
                phases.setdefault(-1, _PhaseCounts()).malformed += 1
                continue
            counts = phases.setdefault(phase, _PhaseCounts())
            key = (sender, seq)
            if key not in counts.seen:
                counts.seen.add(key)
                counts.latencies_ms.append((now - sent_at) * 1000)

    async def publish_phase(cmd: dict[str, Any]) -> dict[str, Any]:
        phase, rate, size, count = cmd["phase"], cmd["rate"], cmd["size"], cmd["count"]
        padding = b"\x00" * max(0, size - HEADER.size)
        await trio.sleep(max(0.0, cmd["start_at"] - time.time()))
        t0 = trio.current_time()
        for seq in range(count):
            await trio.sleep_until(t0 + seq / rate)
            await net.publish(TOPIC, HEADER.pack(phase, index, seq, time.time()) + padding)
        publish_s = trio.current_time() - t0
        await trio.sleep(max(0.0, cmd["report_at"] - time.time()))
        counts = phases.pop(phase, _PhaseCounts())
        lat = counts.latencies_ms
        if len(lat) > MAX_LATENCY_SAMPLES:
            step = len(lat) / MAX_LATENCY_SAMPLES
            lat = [lat[int(i * step)] for i in range(MAX_LATENCY_SAMPLES)]
        return {
            "phase": phase, "index": index, "sent": count, "publish_s": publish_s,
            "received": len(counts.seen), "latencies_ms": lat, "dropped": net.stats()["dropped"],
        }

    async with net.run():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            while len(net.connected_peers()) < others or len(net.mesh_peers(TOPIC)) < min(others, 2):
                await trio.sleep(0.05)
            send({"ready": True, "index": index, "peer_id": net.peer_id})
            stdin = trio.lowlevel.FdStream(os.dup(0))
            buf = b""
            while True:
                chunk = await stdin.receive_some(65536)
                if not chunk:
                    break  # parent gone
                buf += chunk
                stop = False
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    cmd = json.loads(line)
                    if cmd["cmd"] == "stop":
                        stop = True
                        break
                    send(await publish_phase(cmd))
                if stop:
                    break
            nursery.cancel_scope.cancel()


_CONTROL_FD = 3


def _worker_entry(args: argparse.Namespace) -> None:
    import logging

    import trio

    # The control stream is the original stdout, moved to fd 3; fd 1 now goes to stderr.
    os.dup2(1, _CONTROL_FD)
    os.dup2(2, 1)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )
    peers = [p for p in args.peers.split(",") if p]
    trio.run(_worker_main, args.index, bytes.fromhex(args.seed), args.port, peers)


# ----------------------------------------------------------------------------------- parent side


@dataclass
class PhaseResult:
    """One phase, over all workers. ``offered_msgs_per_s``: aggregate rate asked for;
    ``achieved_msgs_per_s``: messages published / the slowest worker's publishing time;
    ``delivery``: deliveries / (published x (workers - 1)); latencies in ms over every delivery
    (None if none); ``dropped``: the workers' ``P2PNetwork`` drop counters, summed by reason."""

    size: int
    offered_msgs_per_s: float
    published: int
    deliveries: int
    expected: int
    achieved_msgs_per_s: float
    latency_ms_p50: float | None
    latency_ms_p99: float | None
    dropped: dict[str, int]

    @property
    def delivery(self) -> float:
        """Fraction of the expected deliveries that happened (0..1)."""
        return self.deliveries / self.expected if self.expected else 0.0


class _Worker:
    def __init__(self, index: int, popen: subprocess.Popen[bytes], stderr_path: Path) -> None:
        self.index = index
        self.popen = popen
        self.stderr_path = stderr_path
        self._buf = b""

    def stderr_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def read_json(self, deadline: float) -> dict[str, Any]:
        """Read one JSON line from the worker before ``deadline`` (``time.monotonic()``)."""
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise GossipBenchError(f"gossip worker {self.index} sent nothing in time; stderr:\n{self.stderr_tail()}")
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise GossipBenchError(
                        f"gossip worker {self.index} exited (status {self.popen.wait()}); stderr:\n{self.stderr_tail()}"
                    )
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def send(self, obj: dict[str, Any]) -> None:
        assert self.popen.stdin is not None
        try:
            self.popen.stdin.write(json.dumps(obj).encode() + b"\n")
            self.popen.stdin.flush()
        except (BrokenPipeError, OSError):
            raise GossipBenchError(f"gossip worker {self.index} is gone; stderr:\n{self.stderr_tail()}") from None

    def stop(self, grace_s: float = 3.0) -> None:
        """Ask the worker to stop; SIGTERM, then SIGKILL if it lingers. Idempotent."""
        if self.popen.poll() is None:
            try:
                self.send({"cmd": "stop"})
            except GossipBenchError:
                pass
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if self.popen.poll() is not None:
                break
            if sig is not None:
                self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                continue
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


class GossipCluster:
    """``n`` gossip worker processes on loopback, fully connected and meshed.

    Use as ``with GossipCluster(n, workdir) as c: c.run_phase(...)``; leaving the block stops
    every worker (also on error). ``workdir`` receives each worker's stderr (``worker{i}.log``).
    Raises GossipBenchError if a worker does not get ready within ``READY_TIMEOUT_S``.
    """

    def __init__(self, n: int, workdir: Path) -> None:
        if n < 2:
            raise ValueError(f"a gossip cluster needs at least 2 processes, got {n}")
        self.n = n
        self.workdir = Path(workdir)
        self.workers: list[_Worker] = []
        self._phase = 0

    def __enter__(self) -> "GossipCluster":
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        from agent_world_node.network import peer_id_for_seed
        from agent_world_tools.testnet import _parent_death_signal, pick_free_ports

        self.workdir.mkdir(parents=True, exist_ok=True)
        seeds = [os.urandom(32) for _ in range(self.n)]
        ports = pick_free_ports(self.n)
        addrs = [f"/ip4/127.0.0.1/tcp/{p}/p2p/{peer_id_for_seed(s)}" for p, s in zip(ports, seeds, strict=True)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        for i in range(self.n):
            peers = ",".join(a for j, a in enumerate(addrs) if j != i)
            stderr_path = self.workdir / f"worker{i}.log"
            with open(stderr_path, "wb") as err:
                popen = subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.gossip", "--worker", "--index", str(i),
                     "--seed", seeds[i].hex(), "--port", str(ports[i]), "--peers", peers],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env, cwd=ROOT,
                    preexec_fn=_parent_death_signal(),
                )
            self.workers.append(_Worker(i, popen, stderr_path))
        deadline = time.monotonic() + READY_TIMEOUT_S
        for w in self.workers:
            msg = w.read_json(deadline)
            if not msg.get("ready"):
                raise GossipBenchError(f"gossip worker {w.index} said {msg!r} instead of ready")
        log.info("gossip_cluster_ready", processes=self.n)

    def close(self) -> None:
        """Stop every worker (stop command, SIGTERM, SIGKILL); idempotent."""
        for w in self.workers:
            w.stop()

    def run_phase(self, offered_msgs_per_s: float, size: int, duration_s: float = PHASE_S,
                  drain_s: float = DRAIN_S) -> PhaseResult:
        """Publish ``offered_msgs_per_s`` (aggregate) messages of ``size`` bytes (at least the
        18-byte header) for ``duration_s``, wait ``drain_s``, and collect every worker's counts.
        Raises ValueError for a non-positive rate or duration, GossipBenchError if a worker dies
        or does not report."""
        if offered_msgs_per_s <= 0 or duration_s <= 0:
            raise ValueError("rate and duration must be positive")
        self._phase += 1
        per_worker = offered_msgs_per_s / self.n
        count = max(1, round(per_worker * duration_s))
        start_at = time.time() + 0.3
        report_at = start_at + duration_s + drain_s
        cmd = {"cmd": "phase", "phase": self._phase, "rate": per_worker, "size": max(size, HEADER.size),
               "count": count, "start_at": start_at, "report_at": report_at}
        for w in self.workers:
            w.send(cmd)
        deadline = time.monotonic() + (report_at - time.time()) + REPORT_SLACK_S
        reports = [w.read_json(deadline) for w in self.workers]
        published = sum(r["sent"] for r in reports)
        deliveries = sum(r["received"] for r in reports)
        latencies = [x for r in reports for x in r["latencies_ms"]]
        dropped: dict[str, int] = {}
        for r in reports:
            for reason, k in r["dropped"].items():
                dropped[reason] = dropped.get(reason, 0) + k
        slowest = max(r["publish_s"] for r in reports)
        result = PhaseResult(
            size=size,
            offered_msgs_per_s=offered_msgs_per_s,
            published=published,
            deliveries=deliveries,
            expected=published * (self.n - 1),
            # publish_s runs from the first to the last send: count - 1 intervals
            achieved_msgs_per_s=(published - self.n) / slowest if slowest > 0 else float("nan"),
            latency_ms_p50=statistics.median(latencies) if latencies else None,
            latency_ms_p99=_percentile(latencies, 0.99) if latencies else None,
            dropped=dropped,
        )
        log.info("gossip_phase", size=size, offered=offered_msgs_per_s, achieved=round(result.achieved_msgs_per_s, 1),
                 delivery=round(result.delivery, 4), p50_ms=result.latency_ms_p50, p99_ms=result.latency_ms_p99,
                 dropped=dropped)
        return result


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -int(-q * len(ordered) // 1)))
    return ordered[rank - 1]


def sweep(cluster: GossipCluster, size: int, rates: tuple[float, ...],
          on_phase: Callable[[PhaseResult], None] | None = None) -> tuple[PhaseResult | None, list[PhaseResult]]:
    """Run phases at ``rates`` (ascending) until one delivers less than ``MIN_DELIVERY``; rest
    ``REST_S`` after it. Return (the highest phase that met ``MIN_DELIVERY`` or None, all phases)."""
    best: PhaseResult | None = None
    results = []
    for rate in rates:
        r = cluster.run_phase(rate, size)
        results.append(r)
        if on_phase is not None:
            on_phase(r)
        if r.delivery < MIN_DELIVERY:
            time.sleep(REST_S)
            break
        best = r
    return best, results


def run_all(record: Callable[[str, float], None], *, processes: int = PROCESSES,
            verbose: Callable[[str], None] | None = None) -> None:
    """Start ``processes`` workers, sweep 200 B then 64 KiB payloads, and pass the figures named in
    the module docstring to ``record(name, value)``. ``verbose(line)`` gets one line per phase.
    Raises GossipBenchError if a worker fails; workers are always stopped."""
    import tempfile

    def show(r: PhaseResult) -> None:
        if verbose is not None:
            verbose(f"  size={r.size:>6} B offered={r.offered_msgs_per_s:>5.0f}/s achieved={r.achieved_msgs_per_s:7.1f}/s "
                    f"delivery={100 * r.delivery:6.2f}% p50={r.latency_ms_p50 or 0:7.1f} ms "
                    f"p99={r.latency_ms_p99 or 0:7.1f} ms dropped={r.dropped}")

    with tempfile.TemporaryDirectory(prefix="aw-bench-gossip-") as tmp, GossipCluster(processes, Path(tmp)) as cluster:
        for size, rates, label in ((SIZE_SMALL, RATES_200B, "200B"), (SIZE_LARGE, RATES_64KIB, "64KiB")):
            best, results = sweep(cluster, size, rates, show)
            moderate = results[0]
            if moderate.latency_ms_p50 is not None:
                record(f"gossip_{label}_latency_ms_p50", moderate.latency_ms_p50)
                record(f"gossip_{label}_latency_ms_p99", moderate.latency_ms_p99 or 0.0)
            record(f"gossip_{label}_max_msgs_per_s", best.offered_msgs_per_s if best else 0.0)
            record(f"gossip_{label}_achieved_msgs_per_s", best.achieved_msgs_per_s if best else 0.0)
            if best is not None and best.latency_ms_p50 is not None:
                record(f"gossip_{label}_latency_ms_p50_at_max", best.latency_ms_p50)
            if size == SIZE_LARGE:
                record(f"gossip_{label}_max_MB_per_s", (best.offered_msgs_per_s * size / 1e6) if best else 0.0)


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.gossip`` runs the benchmark; ``--worker ...`` is one worker process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help="run as one worker (started by the parent)")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--seed", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--peers", default="")
    parser.add_argument("--processes", type=int, default=PROCESSES)
    args = parser.parse_args(argv)
    if args.worker:
        _worker_entry(args)
        return
    import logging

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    def record(name: str, value: float) -> None:
        print(f"{name:45s} {value:12.2f}", flush=True)

    run_all(record, processes=args.processes, verbose=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
