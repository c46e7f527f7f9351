"""The node's HTTP JSON API (ASGI, served by hypercorn on trio).

Routes (hashes and bytes are lowercase hex in responses):

- ``POST /v1/actions``: a JSON ``SignedAction`` (msgspec JSON form, bytes as base64), at most
  ``MAX_BODY_BYTES``. 202 accepted, 200 duplicate, 400 ``{"error", "code"}`` when malformed or
  inadmissible, 413 too large, 415 when a ``Content-Type`` other than JSON is declared, 503
  ``{"error", "code", "retry_after_ms"}`` with ``Retry-After`` when the node is busy: ``code``
  ``over_capacity`` (the backlog exceeds what the chain commits in ``mempool.target_queue_ms``),
  ``mempool_full``, or ``not_ready`` (cut off from consensus, catching up, or diverged).
- ``POST /v1/actions/batch``: ``{"actions": [SignedAction, ...]}`` (at most ``MAX_SUBMIT_BATCH``
  actions, ``MAX_BATCH_BODY_BYTES``): 200 ``{"results": [{"status", "action_id", "code"?,
  "error"?, "retry_after_ms"?}, ...], "counts": {status: n}}`` in request order (each admitted as
  by ``POST /v1/actions``); 503 with ``Retry-After`` when the node is busy before the body is
  decoded, or every action met a busy answer; 400 when the body is not such a document.
- ``GET /``: the web viewer; ``GET /v1/stream``: executed heights as Server-Sent Events
  (``web``, ``stream``).
- ``GET /v1/status``, ``GET /v1/blocks/{height}``, ``GET /v1/execution/{height}``,
  ``GET /v1/actions/{action_id}`` (pending, or committed with its outcome), ``GET /v1/agents/{agent_id}``, ``GET /v1/events?kind=&agent=&from_height=&to_height=&action_id=&order=asc|desc&cursor=&limit=``, ``GET /v1/modules``,
  ``GET /v1/evidence``, ``GET /v1/builds/{build_id}`` (a build from source: the world's record and
  this node's own build, with the compiler's message), ``GET /health``, ``GET /ready``,
  ``GET /metrics`` (Prometheus text). A block or execution record of a height this node pruned
  (``storage.retain_blocks``) is 410 ``pruned``, naming the heights it keeps.
- Staking and governance, read from the executed world (documents in ``schema``):
  ``GET /v1/staking/validators`` (every candidate: bonds, jail, slashes, power in the set in force),
  ``GET /v1/staking/validators/{validator_id}`` (404 ``unknown_validator``, 400
  ``bad_validator_id``), ``GET /v1/staking/sets?from_epoch=&limit=`` (the known sets, oldest first,
  at most ``MAX_SETS_LIMIT``), ``GET /v1/staking/unbonding``,
  ``GET /v1/governance/proposals?status=&limit=&before=`` (newest first, at most
  ``MAX_PROPOSALS_LIMIT``), ``GET /v1/governance/proposals/{proposal_id}`` (votes, tally, shadow
  report, candidate manifest, its hash and its diff; 404 ``unknown_proposal``, 400
  ``bad_proposal_id``), ``GET /v1/manifest`` (the manifest in force, version and hash) and
  ``GET /v1/manifest/versions?limit=&before=`` (newest first). A bad query value is 400
  ``bad_query``.
- Only with ``rpc.unsafe = true`` in config.toml (local testnets and fault tests): ``GET`` and
  ``POST /v1/unsafe/peer_filter`` with ``{"blocked": [peer id, ...]}``: this node disconnects the
  listed peers and ignores them until the list changes. Otherwise these answer 403.

Every error is JSON ``{"error": what was wrong and what to do, "code": short name}``, also for
unknown routes (404 ``not_found``), wrong methods (405 ``method_not_allowed``) and, should a
handler fail, 500 ``internal_error`` (logged with the traceback).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Protocol

import anyio
import msgspec
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent_world_runtime import World
from agent_world_runtime.actions import SignedAction, decode_signed_action_json, static_action_problem
from agent_world_runtime.audit import EventFilter, event_json
from agent_world_runtime.codec import DecodeError, decode_json, to_builtins
from agent_world_runtime.events import ACTION_REJECTED
from agent_world_runtime.governance.manifest import Manifest, manifest_hash
from agent_world_runtime.governance.records import ManifestVersionRecord, ProposalRecord
from agent_world_runtime.staking.records import UnbondingQueue, ValidatorRecord, ValidatorSetRecord

from .config import NodeConfig
from .metrics import NodeMetrics
from .network.peer_filter import PeerFilter
from .replica import AdmissionResult
from .schema import (
    MAX_SUBMIT_BATCH,
    ActionDocument,
    AdmissionCode,
    AdmissionDocument,
    AdmissionStatus,
    BatchDocument,
    BlockDocument,
    ExecutionDocument,
    ManifestChangeDocument,
    ManifestDocument,
    ManifestVersionDocument,
    ManifestVersionsDocument,
    ProposalDocument,
    ProposalsDocument,
    ProposalSummaryDocument,
    ShadowDocument,
    StatusDocument,
    SubmitBatch,
    TallyDocument,
    UnbondingDocument,
    UnbondingEntryDocument,
    UnbondingQueueDocument,
    ValidatorDocument,
    ValidatorsDocument,
    ValidatorSetDocument,
    ValidatorSetsDocument,
)
from .web import viewer_routes

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 512 * 1024
#: A batch of at most ``schema.MAX_SUBMIT_BATCH`` actions (each at most a few KiB in practice).
MAX_BATCH_BODY_BYTES = 4 * 1024 * 1024
DRAIN_LIMIT_BYTES = 8 * 1024 * 1024
#: Seconds a request body may take to arrive whole; a client that sends part of it and stalls gets
#: 408 and the connection back, instead of holding it (the server's read timeout is the same).
BODY_TIMEOUT_S = 10.0
KEEP_ALIVE_TIMEOUT_S = 5.0  # an idle connection, or one whose request head stalls, is closed after this
#: Largest height a route accepts (the block store keys heights as SQLite 64-bit integers).
MAX_HEIGHT = (1 << 63) - 1
_HEIGHT_RE = re.compile(r"[0-9]{1,19}")
#: A validator id: the lowercase hex of its 32-byte consensus public key.
_VALIDATOR_ID_RE = re.compile(r"[0-9a-f]{64}")
#: A proposal status as the governance rules write it (``voting``, ...).
_STATUS_RE = re.compile(r"[a-z_]{1,32}")
#: Bounds of the listing routes' ``limit``.
MAX_SETS_LIMIT = 100
MAX_PROPOSALS_LIMIT = 200
MAX_VERSIONS_LIMIT = 1000
#: The largest integer a cursor (``from_epoch``, ``before``) takes.
MAX_CURSOR = (1 << 63) - 1


class _Network(Protocol):
    @property
    def peer_filter(self) -> PeerFilter: ...


class NodeView(Protocol):
    """What the API needs of a node (``node.Node`` provides it; tests may pass a stand-in)."""

    config: NodeConfig
    metrics: NodeMetrics

    @property
    def net(self) -> _Network: ...

    @property
    def height(self) -> int: ...
    @property
    def execution_height(self) -> int: ...
    @property
    def world(self) -> World:
        """The executed world (read between blocks: the node runs blocks and API handlers on one
        trio thread, and a handler does not await while it reads)."""
        ...
    def busy(self) -> AdmissionResult | None: ...
    def admit(self, signed: SignedAction) -> AdmissionResult: ...
    def status(self) -> StatusDocument: ...
    def block_json(self, height: int) -> BlockDocument | None: ...
    def pruned_below(self) -> int: ...
    def execution_json(self, height: int) -> ExecutionDocument | None: ...
    def agent_json(self, agent_id: str) -> dict[str, Any] | None: ...
    def action_json(self, action_id: bytes) -> ActionDocument | None: ...
    def modules_json(self) -> dict[str, Any]: ...
    def evidence_json(self) -> list[dict[str, Any]]: ...
    def snapshots_json(self) -> list[dict[str, Any]]: ...

    def build_json(self, build_id: str) -> dict[str, Any] | None: ...
    def set_peer_filter(self, blocked: list[str]) -> list[str]: ...
    def readiness(self) -> tuple[bool, str]: ...


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response from a msgspec Struct (or built-in data)."""
    return Response(msgspec.json.encode(doc), status_code=status, headers=headers, media_type="application/json")


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "code": code, **extra}, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes | None:
    """Read the body, or return None when it exceeds ``limit`` bytes.

    An oversized body is still read and discarded up to DRAIN_LIMIT_BYTES, so the client gets the
    413 answer instead of a connection reset in the middle of its upload; beyond that the
    connection is dropped."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > DRAIN_LIMIT_BYTES:
        return None
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > DRAIN_LIMIT_BYTES:
            return None
        if size <= limit:
            chunks.append(chunk)
    return None if size > limit else b"".join(chunks)


def _content_type_error(request: Request) -> JSONResponse | None:
    """Return a 415 answer when the request declares a ``Content-Type`` that is not JSON
    (``application/json`` or ``application/*+json``); a missing header is accepted."""
    declared = request.headers.get("content-type")
    if declared is None:
        return None
    media = declared.split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return None
    return _error(
        415, "unsupported_media_type",
        f"Content-Type {declared[:100]!r} is not supported; send the body as JSON with Content-Type: application/json",
    )


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"query parameter {name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ValueError(f"query parameter {name} must be between {lo} and {hi}, got {value}")
    return value


async def _json_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes | Response:
    """The request body, or the error response for a wrong content type (415) or a body above
    ``limit`` bytes (413)."""
    wrong_type = _content_type_error(request)
    if wrong_type is not None:
        return wrong_type
    try:
        with anyio.move_on_after(BODY_TIMEOUT_S) as scope:
            body = await _read_body(request, limit)
    except ClientDisconnect:  # the client went away mid-body: nothing to answer, nothing to log loudly
        log.debug("client_disconnected", path=request.url.path)
        return Response(status_code=400)
    if scope.cancelled_caught:
        return _error(408, "body_timeout", f"the request body did not arrive within {BODY_TIMEOUT_S:g} s; send it "
                      "whole, with a Content-Length that matches it")
    if body is None:
        return _error(413, "too_large", f"request body exceeds {limit} bytes; shrink the action or send fewer actions per batch")
    return body


def _document(result: AdmissionResult) -> AdmissionDocument:
    doc = AdmissionDocument(result.status, result.action_id.hex())
    if result.code is not None:
        doc.code = result.code
        doc.error = result.reason
    if result.retry_after_ms:
        doc.retry_after_ms = result.retry_after_ms
    return doc


def _malformed(reason: str) -> AdmissionResult:
    return AdmissionResult(AdmissionStatus.REJECTED, code=AdmissionCode.MALFORMED, reason=reason)


def decode_submission(body: bytes) -> SignedAction | AdmissionResult:
    """Decode the body of ``POST /v1/actions`` (a JSON ``SignedAction``), or the malformed result."""
    try:
        return decode_signed_action_json(body)
    except DecodeError as exc:
        return _malformed(f"{exc}; send a JSON SignedAction {{body, signature}}")


def decode_batch(body: bytes) -> list[SignedAction | AdmissionResult]:
    """Decode the body of ``POST /v1/actions/batch``: each entry a ``SignedAction`` or the malformed
    result of that entry. Raises ValueError (the message says what to send) when the body is not
    ``{"actions": [...]}`` or holds more than ``MAX_SUBMIT_BATCH`` actions."""
    try:
        batch = decode_json(body, SubmitBatch)
    except DecodeError as exc:
        raise ValueError(f'{exc}; send {{"actions": [SignedAction, ...]}}') from None
    if len(batch.actions) > MAX_SUBMIT_BATCH:
        raise ValueError(f"{len(batch.actions)} actions in one batch; send at most {MAX_SUBMIT_BATCH}")
    out: list[SignedAction | AdmissionResult] = []
    for signed in batch.actions:
        problem = static_action_problem(signed)
        out.append(signed if problem is None else _malformed(f"invalid SignedAction: {problem}"))
    return out


def _retry_headers(retry_ms: int) -> dict[str, str]:
    return {"Retry-After": str(max(1, (retry_ms + 999) // 1000))}


# --- staking and governance documents (pure functions of the executed world) ------------------


def _current_epoch(world: World) -> int:
    return world.height // world.epoch_length


def _validator_document(rec: ValidatorRecord, powers: Mapping[str, int], next_powers: Mapping[str, int]) -> ValidatorDocument:
    return ValidatorDocument(
        validator_id=rec.validator_id, operator=rec.operator, name=rec.name, bonded=rec.bonded,
        bonds=dict(sorted(rec.bonds.items())), jailed=rec.jailed, jailed_until=rec.jailed_until,
        jail_reason=rec.jail_reason if rec.jailed else "", slashed=rec.slashed,
        created_at=rec.created_at, in_current_set=rec.validator_id in powers, power=powers.get(rec.validator_id, 0),
        next_power=next_powers.get(rec.validator_id, 0),
    )


def _next_powers(world: World) -> dict[str, int]:
    upcoming = world.validator_set(_current_epoch(world) + 1)
    return dict(upcoming.validators) if upcoming is not None else {}


def validators_document(world: World) -> ValidatorsDocument:
    """``GET /v1/staking/validators``."""
    powers = world.validators()
    next_powers = _next_powers(world)
    return ValidatorsDocument(
        height=world.height, epoch=_current_epoch(world), epoch_length=world.epoch_length,
        total_power=sum(powers.values()),
        validators=[_validator_document(r, powers, next_powers) for r in world.validator_records()],
    )


def validator_document(world: World, validator_id: str) -> ValidatorDocument | None:
    """``GET /v1/staking/validators/{validator_id}``, or None for an unknown validator."""
    rec = world.validator_record(validator_id)
    return None if rec is None else _validator_document(rec, world.validators(), _next_powers(world))


def _set_document(rec: ValidatorSetRecord) -> ValidatorSetDocument:
    validators = [(vid, power) for vid, power in rec.validators]
    return ValidatorSetDocument(epoch=rec.epoch, validators=validators, total_power=sum(p for _, p in validators),
                                hash=rec.hash().hex(), computed_at=rec.computed_at)


def _numbered(table: Mapping[str, Any], kind: type) -> list[tuple[int, Any]]:
    """The records of type ``kind`` of a table keyed by decimal numbers, by number."""
    return sorted((int(k), r) for k, r in table.items() if k.isdigit() and isinstance(r, kind))


def validator_sets_document(world: World, from_epoch: int, limit: int) -> ValidatorSetsDocument:
    """``GET /v1/staking/sets``: up to ``limit`` known sets with ``epoch >= from_epoch``."""
    known = [(e, r) for e, r in _numbered(world.records("valset"), ValidatorSetRecord) if e >= from_epoch]
    page = known[:limit]
    more = len(known) > limit
    return ValidatorSetsDocument(current_epoch=_current_epoch(world), epoch_length=world.epoch_length,
                                 sets=[_set_document(r) for _, r in page],
                                 next_from_epoch=known[limit][0] if more else None)


def events_filter(query: Mapping[str, str]) -> EventFilter:
    """The ``EventFilter`` of ``GET /v1/events`` query parameters: ``kind`` (comma-separated
    patterns: exact, ``prefix*`` or a bare prefix), ``agent``, ``from_height``, ``to_height``,
    ``action_id`` (64 hex). Raises ValueError naming the bad parameter."""
    def height(name: str) -> int | None:
        raw = query.get(name)
        if raw is None:
            return None
        if not raw.isdigit():
            raise ValueError(f"query parameter {name} must be a height (a non-negative integer), got {raw[:40]!r}")
        return int(raw)

    kinds = tuple(k.strip() for k in query.get("kind", "").split(",") if k.strip())
    if len(kinds) > 16 or any(len(k) > 100 for k in kinds):
        raise ValueError("query parameter kind takes at most 16 patterns of at most 100 characters")
    action_id = query.get("action_id")
    if action_id is not None:
        try:
            ok = len(bytes.fromhex(action_id)) == 32
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"query parameter action_id must be 64 hex characters, got {action_id[:80]!r}")
    agent = query.get("agent")
    if agent is not None and not 0 < len(agent) <= 64:
        raise ValueError("query parameter agent must be an agent id of 1-64 characters")
    return EventFilter(kinds=kinds, agent=agent, from_height=height("from_height"), to_height=height("to_height"),
                       action_id=action_id.lower() if action_id else None)


def action_outcome_document(world: World, action_id: bytes, height: int) -> ActionDocument:
    """``GET /v1/actions/{action_id}`` of an action committed and executed at ``height``: its
    outcome from the world's events of that height (``outcome`` ``unknown`` when the journal does
    not hold them)."""
    hex_id = action_id.hex()
    events = world.action_events(action_id, height)
    if not events:
        return ActionDocument(hex_id, "committed", height=height, outcome="unknown")
    rejected = next((e for e in events if e.kind == ACTION_REJECTED), None)
    fee = events[0].data.get("fee")
    return ActionDocument(
        hex_id, "committed", height=height, outcome="applied" if rejected is None else "rejected",
        reason=str(rejected.data.get("reason")) if rejected is not None else None,
        fee=fee if isinstance(fee, int) else None, events=[to_builtins(e) for e in events])


def unbonding_document(world: World) -> UnbondingDocument:
    """``GET /v1/staking/unbonding``."""
    by_epoch: dict[int, list[UnbondingEntryDocument]] = {}
    for _, q in sorted(world.records("unbonding").items()):
        if isinstance(q, UnbondingQueue):
            by_epoch.setdefault(q.release_epoch, []).extend(
                UnbondingEntryDocument(e.agent_id, e.validator_id, e.amount, e.created_at) for e in q.entries)
    queues = [UnbondingQueueDocument(release_epoch=epoch,
                                     entries=sorted(entries, key=lambda e: (e.created_at, e.agent_id, e.validator_id)))
              for epoch, entries in sorted(by_epoch.items()) if entries]
    return UnbondingDocument(current_epoch=_current_epoch(world), queues=queues)


def _summary(p: ProposalRecord) -> ProposalSummaryDocument:
    return ProposalSummaryDocument(
        proposal_id=p.proposal_id, proposer=p.proposer, kind=p.kind, title=p.title, status=p.status,
        base_version=p.base_version, submitted_at=p.submitted_at, voting_end=p.voting_end, decided_at=p.decided_at,
        candidate_manifest_hash=p.shadow.candidate_manifest_hash.hex(), vote_count=len(p.votes), tally=dict(p.tally),
    )


def _page_before(items: list[tuple[int, Any]], before: int, limit: int) -> tuple[list[Any], int | None]:
    """Newest first: up to ``limit`` of ``items`` ((number, record), sorted by number) numbered
    below ``before``, and the ``before`` of the next page (None: no more)."""
    older = [(n, r) for n, r in reversed(items) if n < before]
    page = older[:limit]
    return [r for _, r in page], (page[-1][0] if len(older) > limit else None)


def proposals_document(world: World, status: str | None, limit: int, before: int) -> ProposalsDocument:
    """``GET /v1/governance/proposals``: up to ``limit`` proposals numbered below ``before`` (and
    with ``status``, when given), newest first."""
    items = [(p.proposal_id, p) for p in world.proposals() if status is None or p.status == status]
    page, next_before = _page_before(items, before, limit)
    return ProposalsDocument(proposals=[_summary(p) for p in page], next_before=next_before)


def _pointer_token(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def manifest_diff(old: Any, new: Any, path: str = "") -> list[ManifestChangeDocument]:
    """The differences between two JSON values (objects compared key by key, anything else whole),
    as JSON Pointer paths in key order."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[ManifestChangeDocument] = []
        for key in sorted(set(old) | set(new)):
            sub = f"{path}/{_pointer_token(str(key))}"
            if key not in old:
                out.append(ManifestChangeDocument(sub, "added", None, new[key]))
            elif key not in new:
                out.append(ManifestChangeDocument(sub, "removed", old[key], None))
            else:
                out.extend(manifest_diff(old[key], new[key], sub))
        return out
    if old == new and type(old) is type(new):
        return []
    return [ManifestChangeDocument(path or "/", "changed", old, new)]


def _version_record(world: World, version: int) -> ManifestVersionRecord | None:
    return next((v for v in world.manifest_versions() if v.version == version), None)


def _tally_now(world: World, votes: Mapping[str, str]) -> TallyDocument:
    powers = world.validators()
    weights = {"yes": 0, "no": 0, "abstain": 0}
    for vid, option in votes.items():
        if option in weights:
            weights[option] += powers.get(vid, 0)
    return TallyDocument(yes=weights["yes"], no=weights["no"], abstain=weights["abstain"],
                         voted_power=sum(weights.values()), total_power=sum(powers.values()))


def proposal_document(world: World, proposal_id: int) -> ProposalDocument | None:
    """``GET /v1/governance/proposals/{proposal_id}``, or None for an unknown proposal."""
    p = world.proposal(proposal_id)
    if p is None:
        return None
    base = _version_record(world, p.base_version)
    base_manifest: Manifest = base.manifest if base is not None else world.manifest
    candidate = to_builtins(p.candidate)
    return ProposalDocument(
        proposal_id=p.proposal_id, proposer=p.proposer, kind=p.kind, title=p.title, status=p.status,
        base_version=p.base_version, submitted_at=p.submitted_at, voting_end=p.voting_end, decided_at=p.decided_at,
        ops=[to_builtins(op) for op in p.ops], rollback_to=p.rollback_to, votes=dict(sorted(p.votes.items())),
        tally=dict(p.tally), tally_now=_tally_now(world, p.votes) if p.status == "voting" else None,
        shadow=ShadowDocument(p.shadow.candidate_manifest_hash.hex(), list(p.shadow.changes), list(p.shadow.errors)),
        candidate_manifest_hash=manifest_hash(p.candidate).hex(), candidate_manifest=candidate,
        diff_base_version=base_manifest.version, diff=manifest_diff(to_builtins(base_manifest), candidate),
    )


def manifest_document(world: World) -> ManifestDocument:
    """``GET /v1/manifest``: the manifest in force."""
    manifest = world.manifest
    rec = _version_record(world, manifest.version)
    return ManifestDocument(version=manifest.version, hash=manifest_hash(manifest).hex(),
                            applied_at=rec.applied_at if rec is not None else 0,
                            proposal_id=rec.proposal_id if rec is not None else 0, manifest=to_builtins(manifest))


def manifest_versions_document(world: World, limit: int, before: int) -> ManifestVersionsDocument:
    """``GET /v1/manifest/versions``: up to ``limit`` versions below ``before``, newest first."""
    page, next_before = _page_before([(v.version, v) for v in world.manifest_versions()], before, limit)
    return ManifestVersionsDocument(
        current_version=world.manifest.version,
        versions=[ManifestVersionDocument(v.version, v.applied_at, v.proposal_id, manifest_hash(v.manifest).hex())
                  for v in page],
        next_before=next_before,
    )


def create_app(node: NodeView) -> Starlette:
    """Return the ASGI application serving ``node``."""

    def admit(item: SignedAction | AdmissionResult) -> AdmissionResult:
        if isinstance(item, AdmissionResult):
            node.metrics.actions_refused.labels(AdmissionCode.MALFORMED.value).inc()
            return item
        return node.admit(item)

    def busy_response(result: AdmissionResult) -> Response:
        retry_ms = result.retry_after_ms
        return _error(503, result.code or AdmissionCode.MEMPOOL_FULL, result.reason,
                      headers=_retry_headers(retry_ms), retry_after_ms=retry_ms)

    async def submit_action(request: Request) -> Response:
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        busy = node.busy()  # before decoding: refusing must cost next to nothing
        if busy is not None:
            return busy_response(busy)
        result = admit(decode_submission(body))
        if result.status == AdmissionStatus.ACCEPTED:
            return _json(_document(result), 202)
        if result.status == AdmissionStatus.DUPLICATE:
            return _json(_document(result), 200)
        if result.status == AdmissionStatus.BUSY:
            return busy_response(result)
        return _error(400, result.code or AdmissionCode.MALFORMED, result.reason)

    async def submit_batch(request: Request) -> Response:
        body = await _json_body(request, MAX_BATCH_BODY_BYTES)
        if isinstance(body, Response):
            return body
        refusal = node.busy()
        if refusal is not None:
            return busy_response(refusal)
        try:
            items = decode_batch(body)
        except ValueError as exc:
            node.metrics.actions_refused.labels(AdmissionCode.MALFORMED.value).inc()
            return _error(400, AdmissionCode.MALFORMED, str(exc))
        results = [admit(item) for item in items]
        busy = [r for r in results if r.status == AdmissionStatus.BUSY]
        if busy and len(busy) == len(results):
            return busy_response(max(busy, key=lambda r: r.retry_after_ms))
        counts: dict[str, int] = {}
        for r in results:
            counts[r.status] = counts.get(r.status, 0) + 1
        return _json(BatchDocument([_document(r) for r in results], counts))

    async def status(request: Request) -> Response:
        return _json(node.status())

    def _height(request: Request) -> int | Response:
        raw = request.path_params["height"]
        if not _HEIGHT_RE.fullmatch(raw) or int(raw) > MAX_HEIGHT:
            return _error(400, "bad_height", f"height must be an integer in 0..{MAX_HEIGHT} (decimal digits), got {raw[:40]!r}")
        return int(raw)

    async def latest_block(request: Request) -> Response:
        if node.height == 0:
            return _error(404, "no_blocks", "no block is committed yet; the chain starts at height 1")
        data = node.block_json(node.height)
        return _json(data) if data is not None else _missing_height(node.height, "block")

    async def agents(request: Request) -> Response:
        try:
            limit = _int_param(request, "limit", 100, 1, 1000)
        except ValueError as exc:
            return _error(400, "bad_query", str(exc))
        after = request.query_params.get("after")
        records = node.world.agents_page(after, limit + 1)
        more = len(records) > limit
        page = records[:limit]
        return JSONResponse({"agents": [to_builtins(a) for a in page],
                             "next_after": page[-1].agent_id if more else None})

    async def block(request: Request) -> Response:
        h = _height(request)
        if isinstance(h, Response):
            return h
        data = node.block_json(h)
        if data is None:
            return _missing_height(h, "block")
        return _json(data)

    def _missing_height(h: int, what: str) -> Response:
        pruned = node.pruned_below()
        if 0 < h < pruned:
            return _error(410, "pruned", f"the {what} of height {h} was pruned on this node, which keeps heights "
                          f"{pruned}..{node.height} (storage.retain_blocks); ask an archive node (retain_blocks = 0)")
        if what == "block":
            return _error(404, "not_found", f"no committed block at height {h} on this node (height {node.height})")
        return _error(404, "not_found",
                      f"height {h} is not executed on this node (execution height {node.execution_height})")

    async def execution(request: Request) -> Response:
        h = _height(request)
        if isinstance(h, Response):
            return h
        data = node.execution_json(h)
        if data is None:
            return _missing_height(h, "execution record")
        return _json(data)

    async def action(request: Request) -> Response:
        raw = request.path_params["action_id"]
        try:
            action_id = bytes.fromhex(raw)
        except ValueError:
            action_id = b""
        if len(action_id) != 32:
            return _error(400, "bad_action_id", f"action id {raw[:80]!r} is not 64 hex characters; use the "
                          "action_id the submission answered (sha256 of the signed payload)")
        doc = node.action_json(action_id)
        if doc is None:
            return _error(404, "unknown_action", f"no action {raw} in this node's mempool or stored blocks: never "
                          "submitted here or gossiped to it, dropped from the mempool (resubmit it), or committed "
                          "at a height this node pruned")
        return _json(doc)

    async def agent(request: Request) -> Response:
        agent_id = request.path_params["agent_id"]
        data = node.agent_json(agent_id)
        if data is None:
            return _error(404, "unknown_agent", f"no agent {agent_id[:64]!r}; an existing agent must create it with a create_agent action")
        return JSONResponse(data)

    async def events(request: Request) -> Response:
        q = request.query_params
        try:
            flt = events_filter(q)
            limit = _int_param(request, "limit", 100, 1, 1000)
            order = q.get("order", "asc")
            if order not in ("asc", "desc"):
                raise ValueError(f"query parameter order must be asc (oldest first) or desc (newest first), got {order!r}")
            cursor: int | None = None
            if "cursor" in q or "from_seq" in q:
                cursor = _int_param(request, "cursor" if "cursor" in q else "from_seq", 0, 0, 1 << 62)
        except ValueError as exc:
            return _error(400, "bad_query", str(exc))
        page = node.world.audit_events(flt, limit=limit, cursor=cursor, newest_first=order == "desc")
        return JSONResponse({"events": [event_json(e) for e in page.events], "next_cursor": page.next_cursor})

    async def modules(request: Request) -> Response:
        return JSONResponse(node.modules_json())

    async def build(request: Request) -> Response:
        build_id = request.path_params["build_id"]
        data = node.build_json(build_id)
        if data is None:
            return _error(404, "unknown_build", f"no build {build_id[:80]!r}; a build id is the hex action id of a "
                          "compile_module_artifact_from_source whose sources need a toolchain")
        return JSONResponse(data)

    async def evidence(request: Request) -> Response:
        return JSONResponse({"evidence": node.evidence_json()})

    async def snapshots(request: Request) -> Response:
        return JSONResponse({"snapshots": node.snapshots_json()})

    # -- staking and governance: each handler reads the executed world without awaiting --------
    async def staking_validators(request: Request) -> Response:
        return _json(validators_document(node.world))

    async def staking_validator(request: Request) -> Response:
        vid = request.path_params["validator_id"]
        if not _VALIDATOR_ID_RE.fullmatch(vid):
            return _error(400, "bad_validator_id", f"a validator id is the 64 lowercase hex characters of its consensus "
                          f"public key, got {vid[:80]!r}; list them with GET /v1/staking/validators")
        doc = validator_document(node.world, vid)
        if doc is None:
            return _error(404, "unknown_validator", f"no validator {vid}; list them with GET /v1/staking/validators, "
                          "create one with a create_validator action (awnode staking create-validator)")
        return _json(doc)

    async def staking_sets(request: Request) -> Response:
        try:
            from_epoch = _int_param(request, "from_epoch", 0, 0, MAX_CURSOR)
            limit = _int_param(request, "limit", 20, 1, MAX_SETS_LIMIT)
        except ValueError as exc:
            return _error(400, "bad_query", str(exc))
        return _json(validator_sets_document(node.world, from_epoch, limit))

    async def staking_unbonding(request: Request) -> Response:
        return _json(unbonding_document(node.world))

    async def proposals(request: Request) -> Response:
        try:
            limit = _int_param(request, "limit", 50, 1, MAX_PROPOSALS_LIMIT)
            before = _int_param(request, "before", MAX_CURSOR, 1, MAX_CURSOR)
        except ValueError as exc:
            return _error(400, "bad_query", str(exc))
        status = request.query_params.get("status")
        if status is not None and not _STATUS_RE.fullmatch(status):
            return _error(400, "bad_query", f"query parameter status must be a proposal status: voting, applied, "
                          f"rejected, expired or failed (1-32 of a-z and _), got {status[:40]!r}")
        return _json(proposals_document(node.world, status, limit, before))

    async def proposal(request: Request) -> Response:
        raw = request.path_params["proposal_id"]
        if not _HEIGHT_RE.fullmatch(raw) or int(raw) > MAX_CURSOR:
            return _error(400, "bad_proposal_id", f"a proposal id is a decimal integer, got {raw[:40]!r}; list them "
                          "with GET /v1/governance/proposals")
        doc = proposal_document(node.world, int(raw))
        if doc is None:
            return _error(404, "unknown_proposal", f"no proposal {int(raw)} on this node (execution height "
                          f"{node.execution_height}); list them with GET /v1/governance/proposals")
        return _json(doc)

    async def manifest(request: Request) -> Response:
        return _json(manifest_document(node.world))

    async def manifest_versions(request: Request) -> Response:
        try:
            limit = _int_param(request, "limit", 100, 1, MAX_VERSIONS_LIMIT)
            before = _int_param(request, "before", MAX_CURSOR, 1, MAX_CURSOR)
        except ValueError as exc:
            return _error(400, "bad_query", str(exc))
        return _json(manifest_versions_document(node.world, limit, before))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        ok, reason = node.readiness()
        return JSONResponse({"ready": ok, "reason": reason}, status_code=200 if ok else 503)

    async def peer_filter(request: Request) -> Response:
        if not node.config.rpc.unsafe:
            return _error(403, "unsafe_disabled", "the unsafe routes are off; set rpc.unsafe = true in config.toml "
                          "(local testnets only) and restart the node")
        if request.method == "GET":
            return JSONResponse({"blocked": sorted(node.net.peer_filter.blocked)})
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        try:
            doc = json.loads(body)
        except ValueError as exc:
            return _error(400, "malformed", f"body is not JSON: {exc}")
        except RecursionError:
            return _error(400, "malformed", 'body nests too deeply; send {"blocked": ["<peer id>", ...]}')
        blocked = doc.get("blocked") if isinstance(doc, dict) else None
        if not isinstance(blocked, list) or not all(isinstance(p, str) for p in blocked) or set(doc) != {"blocked"}:
            return _error(400, "malformed", 'send {"blocked": ["<peer id>", ...]} and nothing else')
        try:
            return JSONResponse({"blocked": node.set_peer_filter(blocked)})
        except ValueError as exc:
            return _error(400, "bad_peer_id", str(exc))

    async def metrics(request: Request) -> Response:
        body, content_type = node.metrics.render()
        return Response(body, media_type=content_type)

    routes = [
        Route("/v1/actions", submit_action, methods=["POST"]),
        Route("/v1/actions/batch", submit_batch, methods=["POST"]),
        Route("/v1/status", status),
        Route("/v1/blocks/latest", latest_block),
        Route("/v1/blocks/{height}", block),
        Route("/v1/agents", agents),
        Route("/v1/execution/{height}", execution),
        Route("/v1/actions/{action_id}", action),
        Route("/v1/agents/{agent_id}", agent),
        Route("/v1/events", events),
        Route("/v1/modules", modules),
        Route("/v1/evidence", evidence),
        Route("/v1/snapshots", snapshots),
        Route("/v1/builds/{build_id}", build),
        Route("/v1/staking/validators", staking_validators),
        Route("/v1/staking/validators/{validator_id}", staking_validator),
        Route("/v1/staking/sets", staking_sets),
        Route("/v1/staking/unbonding", staking_unbonding),
        Route("/v1/governance/proposals", proposals),
        Route("/v1/governance/proposals/{proposal_id}", proposal),
        Route("/v1/manifest", manifest),
        Route("/v1/manifest/versions", manifest_versions),
        Route("/health", health),
        Route("/ready", ready),
        Route("/metrics", metrics),
        Route("/v1/unsafe/peer_filter", peer_filter, methods=["GET", "POST"]),
        *viewer_routes(node),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )


_ROUTE_LIST = "/v1/actions, /v1/actions/{action_id}, /v1/status, /v1/blocks/latest, /v1/blocks/{height}, " \
    "/v1/execution/{height}, /v1/agents, /v1/agents/{agent_id}, /v1/events, /v1/modules, /v1/evidence, /v1/builds/{build_id}, /v1/staking/validators[/{id}], " \
    "/v1/staking/sets, /v1/staking/unbonding, /v1/governance/proposals[/{id}], /v1/manifest[/versions], " \
    "/v1/stream, /health, /ready, /metrics; the web viewer at /"


async def _http_error(request: Request, exc: Exception) -> Response:
    """Answer Starlette's own errors (no such route, wrong method) as JSON like every other error."""
    assert isinstance(exc, HTTPException)
    path = request.url.path[:200]
    if exc.status_code == 404:
        return _error(404, "not_found", f"no route {request.method} {path}; the routes are {_ROUTE_LIST}")
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return _error(
            405, "method_not_allowed", f"method {request.method} is not allowed on {path}; use {allowed or 'another method'}",
            headers=exc.headers,
        )
    return _error(exc.status_code, "http_error", str(exc.detail), headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    """Last resort for a handler bug: log it with the traceback and answer JSON 500."""
    log.error("api_internal_error", method=request.method, path=request.url.path[:200], error=repr(exc)[:500],
              exc_info=exc)
    return _error(500, "internal_error", "the node failed to answer this request (logged); report it with the node's log")
