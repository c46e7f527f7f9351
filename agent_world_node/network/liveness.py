"""Dead-peer detection by periodic libp2p pings on every connection.

py-libp2p 0.8.1 has no dead-peer detection of its own (a SIGSTOPped peer went unnoticed; the yamux
connection never closes), so the node detects it itself.

Choice (documented for operators): every ``interval`` = min(``timeout`` / 3, 5 s) this node sends
one standard libp2p ping (``/ipfs/ping/1.0.0``, 32 random bytes echoed; every libp2p node answers
it) to each connected peer, over one long-lived stream per peer. A connected peer from which no
ping has come back for ``timeout`` seconds (counting from when it was first seen connected) is
declared dead: the callback disconnects it, and the reconnect loop redials it if it is configured.
A ping, not a pubsub heartbeat, is used because it tests the direct connection: a heartbeat
gossiped through a third node would keep a broken link looking alive. Gossip a connected peer
published itself also counts as a sign of life (``note_traffic``): under heavy load a busy peer's
ping answers queue behind megabytes of blocks, and declaring it dead then (measured: every 3-4 s
at 2,500 actions/s) cuts a working connection and stalls consensus.

If this node's own event loop stalled (the sweep ran late by more than ``timeout`` / 2), no peer
is declared dead in that sweep and every peer's clock restarts: the silence was ours, not theirs.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog
import trio
from libp2p.abc import IHost, INetStream
from libp2p.host.ping import ID as PING_PROTOCOL_ID
from libp2p.host.ping import perform_ping_roundtrip
from libp2p.peer.id import ID

log = structlog.get_logger(__name__)

MAX_PING_INTERVAL_S = 5.0  # the remote ping handler closes a stream idle for 10 s


class PeerLiveness:
    """Tracks when each connected peer last answered a ping (``time.monotonic()`` seconds).

    ``timeout_s``: silence after which a peer is dead; ``on_dead(peer_id, silent_for_s)`` is
    awaited for each dead peer (it should disconnect it). ``on_alive(peer_id)`` is called on every
    ping answer. Run ``run(host)`` as a task; it returns only when cancelled.
    """

    def __init__(
        self,
        timeout_s: float,
        on_dead: Callable[[ID, float], Awaitable[None]],
        on_alive: Callable[[ID], None] | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.interval_s = min(timeout_s / 3, MAX_PING_INTERVAL_S)
        self.on_dead = on_dead
        self.on_alive = on_alive
        self.alive_at: dict[ID, float] = {}
        self.rtt_ms: dict[ID, int] = {}
        self._streams: dict[ID, INetStream] = {}
        self._pinging: set[ID] = set()

    async def run(self, host: IHost) -> None:
        """Ping connected peers and declare silent ones dead, until cancelled."""
        async with trio.open_nursery() as nursery:
            last_sweep = time.monotonic()
            while True:
                await trio.sleep(self.interval_s)
                now = time.monotonic()
                stalled = now - last_sweep > self.interval_s + self.timeout_s / 2
                if stalled:
                    log.warning("liveness_sweep_late", late_by_s=round(now - last_sweep - self.interval_s, 3))
                    for pid in self.alive_at:  # our stall, not their silence: restart every clock
                        self.alive_at[pid] = now
                last_sweep = now
                connected = set(host.get_connected_peers())
                for pid in list(self.alive_at):
                    if pid not in connected:
                        self.forget(pid)
                for pid in connected:
                    since = self.alive_at.setdefault(pid, now)
                    silent = now - since
                    if not stalled and silent > self.timeout_s:
                        self.forget(pid)
                        await self.on_dead(pid, silent)
                        continue
                    if pid not in self._pinging:
                        self._pinging.add(pid)
                        nursery.start_soon(self._ping, host, pid)

    def note_traffic(self, peer_id: ID) -> None:
        """``peer_id`` just sent us something (a gossip message it published): it is alive even if
        its ping answer is queued behind a large transfer or its event loop is busy. A frozen
        (SIGSTOPped) peer sends nothing, so it is still found dead."""
        if peer_id in self.alive_at:
            self.alive_at[peer_id] = time.monotonic()

    def forget(self, peer_id: ID) -> None:
        """Drop all state about ``peer_id`` (its ping stream is abandoned; the connection closes it)."""
        self.alive_at.pop(peer_id, None)
        self.rtt_ms.pop(peer_id, None)
        self._streams.pop(peer_id, None)

    async def _ping(self, host: IHost, peer_id: ID) -> None:
        stream = self._streams.get(peer_id)
        ok = False
        try:
            with trio.move_on_after(self.timeout_s):
                if stream is None:
                    stream = await host.new_stream(peer_id, [PING_PROTOCOL_ID])
                rtt = await perform_ping_roundtrip(stream)
                ok = peer_id in self.alive_at  # False if the peer was forgotten meanwhile
            if ok:
                self.alive_at[peer_id] = time.monotonic()
                self.rtt_ms[peer_id] = rtt
                self._streams[peer_id] = stream
                if self.on_alive is not None:
                    self.on_alive(peer_id)
        except Exception as exc:
            log.debug("ping_failed", peer=peer_id.to_base58(), error=repr(exc))
        finally:
            self._pinging.discard(peer_id)
            if not ok:
                self._streams.pop(peer_id, None)
                if stream is not None:
                    with trio.move_on_after(1.0) as scope:
                        scope.shield = True
                        try:
                            await stream.reset()
                        except Exception:
                            pass
