"""The web viewer's routes: its static files and the push stream.

- ``GET /``: the viewer page (``viewer/index.html`` of this package);
- ``GET /viewer/{name}``: the viewer's other files (JavaScript, CSS, images), read from the
  package directory ``viewer/``; only plain file names of known types, nothing outside it;
- ``GET /v1/stream[?from_height=H]`` (or with ``Last-Event-ID: H``): the executed heights as
  Server-Sent Events (``stream.BlockFeed``), resuming after height H; 503 ``too_many_streams``
  beyond ``stream.MAX_SUBSCRIBERS``, 400 ``bad_query`` for a bad height.

The files ship inside the package: no build step and nothing fetched at run time.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .stream import MAX_SUBSCRIBERS, BlockFeed

VIEWER_DIR = Path(__file__).parent / "viewer"
_ASSET_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".json": "application/json",
}
_MAX_HEIGHT = 2**63 - 1


class StreamNode(Protocol):
    """What these routes need of a node."""

    feed: BlockFeed


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


def _asset(name: str) -> Response:
    path = VIEWER_DIR / name
    content_type = _CONTENT_TYPES.get(path.suffix)
    if not _ASSET_RE.fullmatch(name) or content_type is None or not path.is_file():
        return _error(404, "not_found", f"the viewer has no file {name[:100]!r}; open / for the viewer")
    # no-cache: the browser revalidates, so a node upgraded in place serves its new viewer at once
    return Response(path.read_bytes(), media_type=content_type, headers={"Cache-Control": "no-cache"})


def _resume_height(request: Request) -> int | None:
    """The height a stream resumes after: the ``Last-Event-ID`` header an ``EventSource`` sends
    on reconnecting (it keeps the original URL, so the header is the newer word), else
    ``from_height``; None for neither. Raises ValueError naming the bad value."""
    for name, raw in (("Last-Event-ID", request.headers.get("last-event-id")),
                      ("from_height", request.query_params.get("from_height"))):
        if raw is None or raw == "":
            continue
        if not raw.isdigit() or int(raw) > _MAX_HEIGHT:
            raise ValueError(f"{name} must be a height (decimal digits), got {raw[:40]!r}")
        return int(raw)
    return None


class _EventStream(StreamingResponse):
    """A ``text/event-stream`` response that gives its subscriber slot back when it ends."""

    def __init__(self, feed: BlockFeed, body: AsyncIterator[bytes]) -> None:
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._feed = feed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._feed.subscribers -= 1


def viewer_routes(node: Any) -> list[Route]:
    """The routes of the viewer and the stream for ``node`` (a ``StreamNode``)."""

    async def index(request: Request) -> Response:
        return _asset("index.html")

    async def asset(request: Request) -> Response:
        return _asset(request.path_params["name"])

    async def stream(request: Request) -> Response:
        feed: BlockFeed = node.feed
        try:
            after = _resume_height(request)
        except ValueError as exc:
            return _error(400, "bad_query", str(exc))
        if feed.subscribers >= MAX_SUBSCRIBERS:
            return JSONResponse({"error": f"this node already serves {MAX_SUBSCRIBERS} streams; retry later or use "
                                 "another node", "code": "too_many_streams", "retry_after_ms": 5000},
                                status_code=503, headers={"Retry-After": "5"})
        feed.subscribers += 1  # taken back when the response ends, however it ends
        return _EventStream(feed, feed.stream(after))

    return [
        Route("/", index),
        Route("/viewer/{name}", asset),
        Route("/v1/stream", stream),
    ]
