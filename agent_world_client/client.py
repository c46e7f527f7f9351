"""HTTP client library for a node's JSON API (the endpoints of ``agent_world_node.api``), used by the
CLI, the agents, the testnet launcher and the benchmarks.

``NodeClient`` is async (``httpx.AsyncClient``; works under trio and asyncio through anyio).
``SyncNodeClient`` is a thin blocking wrapper for the CLI: each call runs the async client in its own
``trio.run``. Agent key files (``AgentKey``) live here too, because every client that signs actions
needs one.

Errors (all subclasses of ``ClientError``, each message saying what went wrong and what to do):

- ``NodeUnreachable``: connection refused, timed out or broken ("cannot reach node at URL: ...;
  is it running?").
- ``ActionRejected(code, reason)``: the node answered 400 (or 413/422) to a submission; ``code`` is the
  node's machine-readable code, a value of ``agent_world_node.schema.AdmissionCode``
  (``malformed``, ``too_large``, ``wrong_chain``, ``bad_agent_id``, ``already_registered``,
  ``bad_signature``, ``negative_nonce``, ``unknown_agent``, ``nonce_replayed``).
- ``NodeBusy``: the node kept answering 503 (busy: over capacity, mempool full, or not ready) after
  the bounded number of retries.
- ``NotFound``: 404 for a block, execution record, agent, validator or proposal that the node does
  not have.
- ``BadResponse``: any other status, or a body that is not the JSON the API promises.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import anyio
import httpx
import msgspec
import structlog
import trio

from agent_world_node.schema import StatusDocument
from agent_world_runtime.actions import AGENT_ID_RE, SignedAction
from agent_world_runtime.codec import encode_json
from agent_world_runtime.crypto import SigningKey

log = structlog.get_logger(__name__)

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_503_RETRIES = 5
DEFAULT_MAX_RETRY_WAIT_S = 5.0
# Used when a 503 carries neither ``retry_after_ms`` nor a Retry-After header.
DEFAULT_RETRY_WAIT_S = 0.5


class ClientError(RuntimeError):
    """Base class of every error this client raises; ``str(exc)`` is a complete, readable sentence."""


class NodeUnreachable(ClientError):
    """The node could not be reached, or did not answer in time."""


class ActionRejected(ClientError):
    """The node refused a submitted action. ``code`` is the node's error code, ``reason`` its text."""

    def __init__(self, code: str, reason: str, *, status: int = 400) -> None:
        super().__init__(f"action rejected ({code}): {reason}")
        self.code = code
        self.reason = reason
        self.status = status


class NodeBusy(ClientError):
    """The node answered 503 (busy) ``retries + 1`` times in a row; try again later, slow down, or
    submit to another node."""

    def __init__(self, message: str, *, retries: int) -> None:
        super().__init__(message)
        self.retries = retries


class NotFound(ClientError):
    """The node answered 404: it does not know the requested block, execution record or agent."""


class BadResponse(ClientError):
    """The node answered with an unexpected status or a body that is not the promised JSON."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SubmitResult(msgspec.Struct, frozen=True):
    """Outcome of an accepted submission: ``status`` is ``"accepted"`` (202, new) or ``"duplicate"``
    (200, the node already had it); ``action_id`` is the lowercase hex sha256 of the payload;
    ``retries`` counts the 503 answers waited out before this one."""

    status: str
    action_id: str
    retries: int = 0


def normalize_base_url(url: str) -> str:
    """Return ``url`` with an ``http://`` scheme added when missing and no trailing slash.

    ``"127.0.0.1:26657"`` -> ``"http://127.0.0.1:26657"``. Raises ClientError for an empty string.
    """
    url = url.strip()
    if not url:
        raise ClientError("empty node URL; pass something like --rpc http://127.0.0.1:26657")
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def retry_wait_s(response: httpx.Response, body: Any, *, default_s: float, max_s: float) -> float:
    """Return how long to wait (seconds) before retrying after a 503.

    Uses the body's ``retry_after_ms`` if present, else the ``Retry-After`` header (seconds, RFC 9110
    section 10.2.3; the HTTP-date form is not used by nodes and falls back to ``default_s``), clamped to
    ``[0, max_s]``.
    """
    wait: float | None = None
    if isinstance(body, dict):
        ms = body.get("retry_after_ms")
        if isinstance(ms, (int, float)) and not isinstance(ms, bool) and math.isfinite(ms):
            wait = ms / 1000.0
    if wait is None:
        header = response.headers.get("retry-after")
        if header is not None:
            try:
                wait = float(header)
            except ValueError:
                wait = None
    if wait is None or not math.isfinite(wait):
        wait = default_s
    return min(max(wait, 0.0), max_s)


def _json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _error_text(body: Any, response: httpx.Response) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    text = response.text.strip().replace("\n", " ")
    return text[:200] if text else "(empty body)"


class NodeClient:
    """Async client of one node's HTTP API.

    ``base_url``: e.g. ``http://127.0.0.1:26657`` (scheme optional). ``timeout_s``: per request,
    seconds. ``max_503_retries``: how many 503 answers ``submit`` waits out before raising NodeBusy;
    each wait follows the node's hint, capped at ``max_retry_wait_s`` seconds. ``transport``: an
    ``httpx.AsyncBaseTransport`` (tests pass ``httpx.MockTransport``).

    Use as ``async with NodeClient(url) as c: await c.status()``, or call ``aclose()`` when done.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_503_retries: int = DEFAULT_MAX_503_RETRIES,
        max_retry_wait_s: float = DEFAULT_MAX_RETRY_WAIT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self.timeout_s = timeout_s
        self.max_503_retries = max_503_retries
        self.max_retry_wait_s = max_retry_wait_s
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, transport=transport)

    async def __aenter__(self) -> "NodeClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise NodeUnreachable(
                f"node at {self.base_url} did not answer {method} {path} within {self.timeout_s:g} s "
                f"({type(exc).__name__}); is it running and not overloaded?"
            ) from None
        except httpx.TransportError as exc:
            detail = str(exc) or type(exc).__name__
            raise NodeUnreachable(f"cannot reach node at {self.base_url}: {detail}; is it running?") from None

    async def _get_json(self, path: str, *, params: dict[str, Any] | None = None, what: str = "") -> Any:
        response = await self._request("GET", path, params=params)
        body = _json_body(response)
        if response.status_code == 404:
            raise NotFound(f"node at {self.base_url} has no {what or path}: {_error_text(body, response)}")
        if response.status_code != 200:
            raise BadResponse(
                f"node at {self.base_url} answered GET {path} with HTTP {response.status_code}: "
                f"{_error_text(body, response)}",
                status=response.status_code,
            )
        if body is None:
            raise BadResponse(
                f"node at {self.base_url} answered GET {path} with a body that is not JSON; "
                "is this URL an Agent World node?",
                status=response.status_code,
            )
        return body

    async def submit(self, signed: SignedAction, *, on_retry: Callable[[float], None] | None = None) -> SubmitResult:
        """POST ``signed`` (its msgspec JSON form) to ``/v1/actions``.

        Returns a SubmitResult on 202/200. On 503 it waits the node's hint and retries, at most
        ``max_503_retries`` times, calling ``on_retry(wait_s)`` before each wait. Raises ActionRejected
        on 400/413/422, NodeBusy when the retries are used up, NodeUnreachable, or BadResponse.
        """
        return await self.submit_json(encode_json(signed), on_retry=on_retry)

    async def submit_json(self, payload: bytes, *, on_retry: Callable[[float], None] | None = None) -> SubmitResult:
        """Like ``submit`` but with the JSON body already encoded (``codec.encode_json(signed)``)."""
        retries = 0
        while True:
            response = await self._request(
                "POST", "/v1/actions", content=payload, headers={"content-type": "application/json"}
            )
            body = _json_body(response)
            status = response.status_code
            if status in (200, 202):
                if not isinstance(body, dict) or not isinstance(body.get("action_id"), str):
                    raise BadResponse(
                        f"node at {self.base_url} accepted the action but its answer has no action_id: "
                        f"{_error_text(body, response)}",
                        status=status,
                    )
                default = "accepted" if status == 202 else "duplicate"
                return SubmitResult(status=str(body.get("status", default)), action_id=body["action_id"], retries=retries)
            if status in (400, 413, 422):
                code = body.get("code") if isinstance(body, dict) else None
                raise ActionRejected(
                    code if isinstance(code, str) and code else "rejected", _error_text(body, response), status=status
                )
            if status == 503:
                if retries >= self.max_503_retries:
                    raise NodeBusy(
                        f"node at {self.base_url} is busy ({_error_text(body, response)}) after {retries} retries; "
                        "slow down or try another node",
                        retries=retries,
                    )
                wait = retry_wait_s(response, body, default_s=DEFAULT_RETRY_WAIT_S, max_s=self.max_retry_wait_s)
                retries += 1
                log.debug("node_busy_retrying", node=self.base_url, retry=retries, wait_s=wait)
                if on_retry is not None:
                    on_retry(wait)
                await anyio.sleep(wait)
                continue
            raise BadResponse(
                f"node at {self.base_url} answered POST /v1/actions with HTTP {status}: {_error_text(body, response)}",
                status=status,
            )

    async def submit_batch(self, signed: list[SignedAction]) -> list[dict[str, Any]]:
        """POST the actions to ``/v1/actions/batch`` (at most 1,000); return the per-action results
        in order (``status``: accepted | duplicate | rejected | busy, ``action_id``, and ``code``,
        ``error``, ``retry_after_ms`` when set). When every action met a full mempool (503) it waits
        the node's hint and retries, at most ``max_503_retries`` times, then raises NodeBusy.
        Raises ActionRejected (400/413) for a malformed batch, NodeUnreachable, or BadResponse."""
        payload = b'{"actions":[' + b",".join(encode_json(a) for a in signed) + b"]}"
        retries = 0
        while True:
            response = await self._request(
                "POST", "/v1/actions/batch", content=payload, headers={"content-type": "application/json"}
            )
            body = _json_body(response)
            status = response.status_code
            if status == 200 and isinstance(body, dict) and isinstance(body.get("results"), list):
                return body["results"]
            if status in (400, 413, 415):
                code = body.get("code") if isinstance(body, dict) else None
                raise ActionRejected(code if isinstance(code, str) and code else "rejected",
                                     _error_text(body, response), status=status)
            if status == 503 and retries < self.max_503_retries:
                retries += 1
                await anyio.sleep(retry_wait_s(response, body, default_s=DEFAULT_RETRY_WAIT_S, max_s=self.max_retry_wait_s))
                continue
            if status == 503:
                raise NodeBusy(f"node at {self.base_url} is busy after {retries} retries; slow down", retries=retries)
            raise BadResponse(
                f"node at {self.base_url} answered POST /v1/actions/batch with HTTP {status}: {_error_text(body, response)}",
                status=status,
            )

    async def status(self) -> dict[str, Any]:
        """GET /v1/status as a dict (the fields of ``agent_world_node.schema.StatusDocument``:
        node_id, moniker, chain_id, height, execution_height, execution_state_root, peers, ...)."""
        body = await self._get_json("/v1/status", what="status")
        if not isinstance(body, dict):
            raise BadResponse(f"node at {self.base_url} answered /v1/status with {type(body).__name__}, not an object")
        return body

    async def status_document(self) -> StatusDocument:
        """GET /v1/status decoded as the API's ``StatusDocument``. Raises BadResponse when the
        node's answer does not have that shape (e.g. a node of another version)."""
        body = await self.status()
        try:
            return msgspec.convert(body, StatusDocument)
        except msgspec.ValidationError as exc:
            raise BadResponse(f"node at {self.base_url} answered /v1/status with an unexpected document: {exc}") from None

    async def set_peer_filter(self, blocked: list[str]) -> list[str]:
        """POST /v1/unsafe/peer_filter: make the node disconnect and ignore the ``blocked`` peer ids
        (an empty list lifts the filter); returns the list the node now applies. Needs
        ``rpc.unsafe = true`` on the node; raises BadResponse otherwise (403) or for a bad id (400)."""
        response = await self._request("POST", "/v1/unsafe/peer_filter", json={"blocked": list(blocked)})
        body = _json_body(response)
        if response.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("blocked"), list):
            raise BadResponse(
                f"node at {self.base_url} answered POST /v1/unsafe/peer_filter with HTTP {response.status_code}: "
                f"{_error_text(body, response)}",
                status=response.status_code,
            )
        return body["blocked"]

    async def block(self, height: int) -> dict[str, Any]:
        """GET /v1/blocks/{height}: height, block_hash, header, actions, certificate. NotFound if unknown."""
        return await self._get_json(f"/v1/blocks/{int(height)}", what=f"block at height {height}")

    async def execution(self, height: int) -> dict[str, Any]:
        """GET /v1/execution/{height}: height, execution_block_hash, execution_state_root, events_root,
        action_count. NotFound if the node has not executed ``height``."""
        return await self._get_json(f"/v1/execution/{int(height)}", what=f"execution record for height {height}")

    async def action(self, action_id: str) -> dict[str, Any]:
        """GET /v1/actions/{action_id}: ``status`` ``pending`` or ``committed`` (with ``height``,
        ``outcome`` ``applied`` or ``rejected``, ``reason``, ``fee``, ``events``). NotFound when the
        node does not know the action."""
        return await self._get_json(f"/v1/actions/{action_id}", what=f"action {action_id[:16]}")

    async def wait_action(self, action_id: str, *, timeout_s: float = 60.0, poll_s: float = 0.25) -> dict[str, Any]:
        """Poll ``action`` until the action is committed and executed (``outcome`` ``applied`` or
        ``rejected``) and return that document. An action not known yet (a moment after it was
        submitted to another node) is waited for too. Raises ClientError after ``timeout_s``
        seconds, naming the last status seen."""
        deadline = trio.current_time() + timeout_s
        last = "unknown to the node"
        while True:
            try:
                doc = await self.action(action_id)
            except NotFound:
                doc = None
            if doc is not None:
                if doc.get("outcome") in ("applied", "rejected", "unknown"):
                    return doc
                last = str(doc.get("status"))
            if trio.current_time() >= deadline:
                raise ClientError(f"action {action_id} was not executed within {timeout_s:g} s (last status: {last}); "
                                  f"look it up later with GET /v1/actions/{action_id}")
            await trio.sleep(poll_s)

    async def agents(self, *, after: str | None = None, limit: int = 100) -> tuple[list[dict[str, Any]], str | None]:
        """GET /v1/agents: up to ``limit`` agents in id order after ``after``; returns them and the
        ``after`` of the next page (None: no more)."""
        params: dict[str, Any] = {"limit": int(limit)}
        if after is not None:
            params["after"] = after
        body = await self._get_json("/v1/agents", params=params, what="agents")
        if not isinstance(body, dict) or not isinstance(body.get("agents"), list):
            raise BadResponse(f"node at {self.base_url} answered /v1/agents without an 'agents' list")
        nxt = body.get("next_after")
        return body["agents"], nxt if isinstance(nxt, str) else None

    async def latest_block(self) -> dict[str, Any]:
        """GET /v1/blocks/latest: the block at the node's committed height (as ``block``).
        NotFound before the first block."""
        return await self._get_json("/v1/blocks/latest", what="the latest block")

    async def agent(self, agent_id: str) -> dict[str, Any]:
        """GET /v1/agents/{agent_id}: agent_id, public_key, position [x,y,z], electricity, data,
        last_nonce. NotFound if the agent is not registered (in the node's executed state)."""
        return await self._get_json(f"/v1/agents/{agent_id}", what=f"agent {agent_id!r}")

    async def events(self, from_seq: int = 0, limit: int = 100, kind: str | None = None) -> list[dict[str, Any]]:
        """GET /v1/events: up to ``limit`` events with seq >= ``from_seq`` whose kind matches
        ``kind`` (an exact kind, ``prefix*`` or a bare prefix; all kinds if None), oldest first.
        Each event: seq, height, kind, data. ``event_page`` takes every filter."""
        events, _ = await self.event_page(kind=kind, cursor=from_seq, limit=limit)
        return events

    async def event_page(self, *, kind: str | None = None, agent: str | None = None, from_height: int | None = None,
                         to_height: int | None = None, action_id: str | None = None, newest_first: bool = False,
                         cursor: int | None = None, limit: int = 100) -> tuple[list[dict[str, Any]], int | None]:
        """GET /v1/events with filters (``kind``: comma-separated patterns; ``agent``: events
        about that agent; heights inclusive; ``action_id`` hex), oldest first or ``newest_first``,
        from seq ``cursor``. Returns the events and the cursor of the next page (None: no more).
        A page may hold fewer events than ``limit`` (even none) when the node stopped scanning:
        continue from the cursor."""
        params: dict[str, Any] = {"limit": int(limit), "order": "desc" if newest_first else "asc"}
        for name, value in (("kind", kind), ("agent", agent), ("from_height", from_height),
                            ("to_height", to_height), ("action_id", action_id), ("cursor", cursor)):
            if value is not None and value != "":
                params[name] = value
        body = await self._get_json("/v1/events", params=params, what="events")
        if not isinstance(body, dict) or not isinstance(body.get("events"), list):
            raise BadResponse(f"node at {self.base_url} answered /v1/events without an 'events' list")
        nxt = body.get("next_cursor")
        return body["events"], nxt if isinstance(nxt, int) else None

    async def build(self, build_id: str) -> dict[str, Any]:
        """GET /v1/builds/{build_id}: the world's record of a build from source (status, code,
        wasm_hash, attestations) and ``this_node`` (that node's own build and the compiler's
        message). Raises NotFound for an unknown build."""
        body = await self._get_json(f"/v1/builds/{build_id}", what="build")
        if not isinstance(body, dict):
            raise BadResponse(f"node at {self.base_url} answered /v1/builds with {type(body).__name__}, not an object")
        return body

    async def modules(self) -> dict[str, Any]:
        """GET /v1/modules: {"artifacts": [...], "instances": [...]}."""
        body = await self._get_json("/v1/modules", what="module list")
        if not isinstance(body, dict):
            raise BadResponse(f"node at {self.base_url} answered /v1/modules with {type(body).__name__}, not an object")
        body.setdefault("artifacts", [])
        body.setdefault("instances", [])
        return body

    async def snapshots(self) -> list[dict[str, Any]]:
        """GET /v1/snapshots: the state-sync snapshots the node keeps and serves, newest first
        (``height``, ``format``, ``size``, ``chunks``, ``hash``, ``state_root``)."""
        body = await self._get_json("/v1/snapshots", what="snapshot list")
        if not isinstance(body, dict) or not isinstance(body.get("snapshots"), list):
            raise BadResponse(f"node at {self.base_url} answered /v1/snapshots without a snapshot list")
        return body["snapshots"]

    # -- staking and governance (reads of the node's executed world; documents in ``schema``) --

    async def _get_object(self, path: str, *, params: dict[str, Any] | None = None, what: str = "",
                          key: str | None = None) -> dict[str, Any]:
        body = await self._get_json(path, params=params, what=what)
        if not isinstance(body, dict) or (key is not None and not isinstance(body.get(key), list)):
            shape = f"an object with a {key!r} list" if key is not None else "an object"
            raise BadResponse(f"node at {self.base_url} answered GET {path} without {shape}; is it an older version?")
        return body

    async def validators(self) -> dict[str, Any]:
        """GET /v1/staking/validators: ``height``, ``epoch``, ``epoch_length``, ``total_power`` and
        ``validators`` (each a ``schema.ValidatorDocument``: bonded, bonds, jailed, jailed_until,
        slashed, in_current_set, power, next_power, ...)."""
        return await self._get_object("/v1/staking/validators", what="validator list", key="validators")

    async def validator(self, validator_id: str) -> dict[str, Any]:
        """GET /v1/staking/validators/{validator_id}. Raises NotFound for an unknown validator,
        BadResponse (400) for an id that is not 64 lowercase hex characters."""
        return await self._get_object(f"/v1/staking/validators/{validator_id}", what=f"validator {validator_id}")

    async def validator_sets(self, from_epoch: int = 0, limit: int = 20) -> dict[str, Any]:
        """GET /v1/staking/sets: ``current_epoch``, ``epoch_length``, ``sets`` (epoch, validators
        [[id, power], ...], total_power, hash, computed_at; oldest first, ``epoch >= from_epoch``,
        at most ``limit`` (1..100)) and ``next_from_epoch`` (None: no more)."""
        return await self._get_object("/v1/staking/sets", params={"from_epoch": int(from_epoch), "limit": int(limit)},
                                      what="validator sets", key="sets")

    async def unbonding(self) -> dict[str, Any]:
        """GET /v1/staking/unbonding: ``current_epoch`` and ``queues`` (release_epoch, entries of
        agent_id, validator_id, amount, created_at), earliest release first."""
        return await self._get_object("/v1/staking/unbonding", what="unbonding queues", key="queues")

    async def proposals(self, status: str | None = None, limit: int = 50, before: int | None = None) -> dict[str, Any]:
        """GET /v1/governance/proposals: ``proposals`` (newest first, at most ``limit`` (1..200),
        only ``status`` when given, ids below ``before`` when given) and ``next_before``."""
        params: dict[str, Any] = {"limit": int(limit)}
        if status:
            params["status"] = status
        if before is not None:
            params["before"] = int(before)
        return await self._get_object("/v1/governance/proposals", params=params, what="proposal list", key="proposals")

    async def proposal(self, proposal_id: int) -> dict[str, Any]:
        """GET /v1/governance/proposals/{proposal_id}: the proposal with its votes, tally (and
        ``tally_now`` while voting), shadow report, candidate manifest, its hash and ``diff``.
        Raises NotFound for an unknown proposal."""
        return await self._get_object(f"/v1/governance/proposals/{int(proposal_id)}", what=f"proposal {proposal_id}")

    async def manifest(self) -> dict[str, Any]:
        """GET /v1/manifest: ``version``, ``hash``, ``applied_at``, ``proposal_id`` and ``manifest``
        (the rules in force: params, staking, governance, module_changes)."""
        return await self._get_object("/v1/manifest", what="manifest")

    async def manifest_versions(self, limit: int = 100, before: int | None = None) -> dict[str, Any]:
        """GET /v1/manifest/versions: ``current_version``, ``versions`` (version, applied_at,
        proposal_id, hash; newest first, at most ``limit`` (1..1000)) and ``next_before``."""
        params: dict[str, Any] = {"limit": int(limit)}
        if before is not None:
            params["before"] = int(before)
        return await self._get_object("/v1/manifest/versions", params=params, what="manifest versions", key="versions")

    async def health(self) -> bool:
        """GET /health: True iff the node answers 200. Raises NodeUnreachable if it cannot be reached."""
        return (await self._request("GET", "/health")).status_code == 200

    async def ready(self) -> bool:
        """GET /ready: True iff the node says it is ready (200). Raises NodeUnreachable."""
        return (await self._request("GET", "/ready")).status_code == 200

    async def metrics(self) -> str:
        """GET /metrics: the Prometheus text exposition."""
        response = await self._request("GET", "/metrics")
        if response.status_code != 200:
            raise BadResponse(f"node at {self.base_url} answered /metrics with HTTP {response.status_code}")
        return response.text


class SyncNodeClient:
    """Blocking wrapper of NodeClient for the CLI. Each call opens a NodeClient inside its own
    ``trio.run`` and closes it afterwards; same methods, same errors. Not for use inside a running
    event loop. ``transport`` is an ``httpx.MockTransport`` or other transport usable from async code."""

    def __init__(self, base_url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, **kwargs: Any) -> None:
        self.base_url = normalize_base_url(base_url)
        self._kwargs = dict(kwargs, timeout_s=timeout_s)

    def _call(self, method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        async def run() -> Any:
            async with NodeClient(self.base_url, **self._kwargs) as client:
                return await method(client, *args, **kwargs)

        return trio.run(run)

    def submit(self, signed: SignedAction) -> SubmitResult:
        """See NodeClient.submit."""
        return self._call(NodeClient.submit, signed)

    def submit_batch(self, signed: list[SignedAction]) -> list[dict[str, Any]]:
        """See NodeClient.submit_batch."""
        return self._call(NodeClient.submit_batch, signed)

    def status(self) -> dict[str, Any]:
        """See NodeClient.status."""
        return self._call(NodeClient.status)

    def snapshots(self) -> list[dict[str, Any]]:
        """See NodeClient.snapshots."""
        return self._call(NodeClient.snapshots)

    def block(self, height: int) -> dict[str, Any]:
        """See NodeClient.block."""
        return self._call(NodeClient.block, height)

    def execution(self, height: int) -> dict[str, Any]:
        """See NodeClient.execution."""
        return self._call(NodeClient.execution, height)

    def action(self, action_id: str) -> dict[str, Any]:
        """See NodeClient.action."""
        return self._call(NodeClient.action, action_id)

    def wait_action(self, action_id: str, *, timeout_s: float = 60.0, poll_s: float = 0.25) -> dict[str, Any]:
        """See NodeClient.wait_action."""
        return self._call(NodeClient.wait_action, action_id, timeout_s=timeout_s, poll_s=poll_s)

    def agents(self, *, after: str | None = None, limit: int = 100) -> tuple[list[dict[str, Any]], str | None]:
        """See NodeClient.agents."""
        return self._call(NodeClient.agents, after=after, limit=limit)

    def latest_block(self) -> dict[str, Any]:
        """See NodeClient.latest_block."""
        return self._call(NodeClient.latest_block)

    def agent(self, agent_id: str) -> dict[str, Any]:
        """See NodeClient.agent."""
        return self._call(NodeClient.agent, agent_id)

    def event_page(self, **filters: Any) -> tuple[list[dict[str, Any]], int | None]:
        """See NodeClient.event_page."""
        return self._call(NodeClient.event_page, **filters)

    def events(self, from_seq: int = 0, limit: int = 100, kind: str | None = None) -> list[dict[str, Any]]:
        """See NodeClient.events."""
        return self._call(NodeClient.events, from_seq, limit, kind)

    def modules(self) -> dict[str, Any]:
        """See NodeClient.modules."""
        return self._call(NodeClient.modules)

    def build(self, build_id: str) -> dict[str, Any]:
        """See NodeClient.build."""
        return self._call(NodeClient.build, build_id)

    def validators(self) -> dict[str, Any]:
        """See NodeClient.validators."""
        return self._call(NodeClient.validators)

    def validator(self, validator_id: str) -> dict[str, Any]:
        """See NodeClient.validator."""
        return self._call(NodeClient.validator, validator_id)

    def validator_sets(self, from_epoch: int = 0, limit: int = 20) -> dict[str, Any]:
        """See NodeClient.validator_sets."""
        return self._call(NodeClient.validator_sets, from_epoch, limit)

    def unbonding(self) -> dict[str, Any]:
        """See NodeClient.unbonding."""
        return self._call(NodeClient.unbonding)

    def proposals(self, status: str | None = None, limit: int = 50, before: int | None = None) -> dict[str, Any]:
        """See NodeClient.proposals."""
        return self._call(NodeClient.proposals, status, limit, before)

    def proposal(self, proposal_id: int) -> dict[str, Any]:
        """See NodeClient.proposal."""
        return self._call(NodeClient.proposal, proposal_id)

    def manifest(self) -> dict[str, Any]:
        """See NodeClient.manifest."""
        return self._call(NodeClient.manifest)

    def manifest_versions(self, limit: int = 100, before: int | None = None) -> dict[str, Any]:
        """See NodeClient.manifest_versions."""
        return self._call(NodeClient.manifest_versions, limit, before)



# --- agent key files ---------------------------------------------------------------------------


class AgentKeyError(ClientError):
    """An agent key file is missing or invalid; the message names the file and the fix."""


@dataclass(frozen=True)
class AgentKey:
    """An agent's signing key and, optionally, its agent id.

    On disk (``save``/``load``): JSON ``{"seed": hex, "public_key": hex, "agent_id": str}`` with mode
    0600, a superset of ``config.write_key``'s format, so ``config.read_key`` reads it too.
    """

    key: SigningKey
    agent_id: str | None = None

    def save(self, path: Path, *, overwrite: bool = False) -> None:
        """Write the key file atomically with mode 0600. Raises AgentKeyError if ``path`` exists and
        ``overwrite`` is False (keys are never silently replaced) or the agent id is invalid."""
        if self.agent_id is not None and not AGENT_ID_RE.fullmatch(self.agent_id):
            raise AgentKeyError(
                f"invalid agent id {self.agent_id!r}: use 1-64 characters of a-z, 0-9, '_', '.', '-', "
                "starting with a letter or digit"
            )
        path = Path(path)
        if path.exists() and not overwrite:
            raise AgentKeyError(f"{path}: a key file already exists; choose another --out or remove it first")
        data: dict[str, str] = {"seed": self.key.seed.hex(), "public_key": self.key.public_key.hex()}
        if self.agent_id is not None:
            data["agent_id"] = self.agent_id
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "AgentKey":
        """Read a key file (``save`` or ``config.write_key`` format). Raises AgentKeyError if the file is
        missing, not JSON, has no valid 32-byte hex seed, or its public_key does not match the seed."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise AgentKeyError(f"{path}: key file not found; create one with `awnode keygen --out {path}`") from None
        except (OSError, ValueError) as exc:
            raise AgentKeyError(f"{path}: cannot read key file ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("seed"), str):
            raise AgentKeyError(f'{path}: not a key file (expected a JSON object with a hex "seed")')
        try:
            key = SigningKey(bytes.fromhex(data["seed"]))
        except ValueError as exc:
            raise AgentKeyError(f"{path}: invalid seed ({exc}); restore the file from a backup") from None
        public = data.get("public_key")
        if public is not None and public != key.public_key.hex():
            raise AgentKeyError(f"{path}: public_key does not match the seed; the file is corrupt")
        agent_id = data.get("agent_id")
        if agent_id is not None and (not isinstance(agent_id, str) or not AGENT_ID_RE.fullmatch(agent_id)):
            raise AgentKeyError(f"{path}: invalid agent_id {agent_id!r}")
        return cls(key=key, agent_id=agent_id)
