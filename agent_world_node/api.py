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
- ``GET /v1/status``, ``GET /v1/blocks/{height}``, ``GET /v1/execution/{height}``,
  ``GET /v1/agents/{agent_id}``, ``GET /v1/events?from_seq=&limit=&kind=``, ``GET /v1/modules``,
  ``GET /v1/evidence``, ``GET /v1/builds/{build_id}`` (a build from source: the world's record and
  this node's own build, with the compiler's message), ``GET /health``, ``GET /ready``,
  ``GET /metrics`` (Prometheus text). A block or execution record of a height this node pruned
  (``storage.retain_blocks``) is 410 ``pruned``, naming the heights it keeps.
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

import msgspec
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent_world_runtime.actions import SignedAction, decode_signed_action_json, static_action_problem
from agent_world_runtime.codec import DecodeError, decode_json

from .config import NodeConfig
from .metrics import NodeMetrics
from .network.peer_filter import PeerFilter
from .replica import AdmissionResult
from .schema import (
    MAX_SUBMIT_BATCH,
    AdmissionCode,
    AdmissionDocument,
    AdmissionStatus,
    BatchDocument,
    BlockDocument,
    ExecutionDocument,
    StatusDocument,
    SubmitBatch,
)

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 512 * 1024
#: A batch of at most ``schema.MAX_SUBMIT_BATCH`` actions (each at most a few KiB in practice).
MAX_BATCH_BODY_BYTES = 4 * 1024 * 1024
DRAIN_LIMIT_BYTES = 8 * 1024 * 1024
#: Largest height a route accepts (the block store keys heights as SQLite 64-bit integers).
MAX_HEIGHT = (1 << 63) - 1
_HEIGHT_RE = re.compile(r"[0-9]{1,19}")


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
    def busy(self) -> AdmissionResult | None: ...
    def admit(self, signed: SignedAction) -> AdmissionResult: ...
    def status(self) -> StatusDocument: ...
    def block_json(self, height: int) -> BlockDocument | None: ...
    def pruned_below(self) -> int: ...
    def execution_json(self, height: int) -> ExecutionDocument | None: ...
    def agent_json(self, agent_id: str) -> dict[str, Any] | None: ...
    def events_json(self, from_seq: int, limit: int, kind: str | None) -> list[dict[str, Any]]: ...
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
    body = await _read_body(request, limit)
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

    async def agent(request: Request) -> Response:
        agent_id = request.path_params["agent_id"]
        data = node.agent_json(agent_id)
        if data is None:
            return _error(404, "unknown_agent", f"no agent {agent_id[:64]!r}; an existing agent must create it with a create_agent action")
        return JSONResponse(data)

    async def events(request: Request) -> Response:
        try:
            from_seq = _int_param(request, "from_seq", 0, 0, 1 << 62)
            limit = _int_param(request, "limit", 100, 1, 1000)
        except ValueError as exc:
            return _error(400, "bad_query", str(exc))
        kind = request.query_params.get("kind")
        return JSONResponse({"events": node.events_json(from_seq, limit, kind)})

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
        Route("/v1/blocks/{height}", block),
        Route("/v1/execution/{height}", execution),
        Route("/v1/agents/{agent_id}", agent),
        Route("/v1/events", events),
        Route("/v1/modules", modules),
        Route("/v1/evidence", evidence),
        Route("/v1/snapshots", snapshots),
        Route("/v1/builds/{build_id}", build),
        Route("/health", health),
        Route("/ready", ready),
        Route("/metrics", metrics),
        Route("/v1/unsafe/peer_filter", peer_filter, methods=["GET", "POST"]),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )


_ROUTE_LIST = "/v1/actions, /v1/status, /v1/blocks/{height}, /v1/execution/{height}, /v1/agents/{agent_id}, " \
    "/v1/events, /v1/modules, /v1/evidence, /v1/builds/{build_id}, /health, /ready, /metrics"


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
