"""The push stream ``GET /v1/stream`` (Server-Sent Events of executed heights) and the viewer's
file routes: the feed's order, resumption, resets and keep-alives on a stand-in node, then the
real route on an in-process node."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
import trio.testing

from agent_world_node import stream as stream_mod
from agent_world_node import web
from agent_world_node.store import ExecutionRecord
from agent_world_node.stream import BlockFeed
from agent_world_runtime.events import Event

from .node_harness import running_node, single_validator_home


def parse_sse(text: str) -> list[dict]:
    """The messages of a text/event-stream body: {event, id, data} (comments as {comment})."""
    out = []
    for chunk in text.split("\n\n"):
        if not chunk.strip():
            continue
        msg: dict = {}
        for line in chunk.split("\n"):
            if line.startswith(":"):
                msg["comment"] = line[1:].strip()
            else:
                field, _, value = line.partition(": ")
                msg[field] = json.loads(value) if field == "data" else value
        out.append(msg)
    return out


class FakeSource:
    """A node stand-in: heights 1..tip executed; blocks below ``first_held`` are not held."""

    def __init__(self, tip: int, first_held: int = 1) -> None:
        self.execution_height = tip
        self.first_held = first_held
        self.built: list[int] = []

    def stored_block(self, height):
        if not self.first_held <= height <= self.execution_height:
            return None
        self.built.append(height)
        return _FakeStored(height)

    def stored_execution(self, height):
        return ExecutionRecord(height, b"\x01" * 32, bytes([height % 256]) * 32, b"\x00" * 32, 1)

    def events_at(self, height):
        return [Event(seq=height, height=height, kind="domain.agent_moved", data={"agent_id": "a", "to": [height, 0, 0]})]

    def hello(self):
        return {"chain_id": "c", "height": self.execution_height}


class _FakeHeader:
    def __init__(self, height):
        self.height, self.timestamp_ms, self.round, self.proposer = height, 1000 * height, 0, "p" * 64


class _FakeBlock:
    def __init__(self, height):
        self.header = _FakeHeader(height)
        self.actions = [object()]

    def hash(self):
        return bytes([self.header.height % 256]) * 32


class _FakeSig:
    def __init__(self, v):
        self.validator = v


class _FakeStored:
    def __init__(self, height):
        self.block = _FakeBlock(height)
        self.certificate = type("C", (), {"signatures": [_FakeSig("v2"), _FakeSig("v1")]})()


async def collect(feed: BlockFeed, after: int | None, n: int) -> list[dict]:
    msgs = []
    gen = feed.stream(after)
    async for chunk in gen:
        msgs.extend(parse_sse(chunk.decode()))
        if len(msgs) >= n:
            break
    await gen.aclose()
    return msgs


def test_hello_then_every_height_after_the_resume_point_in_order():
    src = FakeSource(tip=5)
    feed = BlockFeed(src)

    async def main():
        return await collect(feed, 2, 4)

    msgs = trio.run(main)
    assert msgs[0]["event"] == "hello" and msgs[0]["data"]["height"] == 5
    assert [(m["event"], m["id"]) for m in msgs[1:]] == [("block", "3"), ("block", "4"), ("block", "5")]
    block = msgs[1]["data"]
    assert block["height"] == 3 and block["signers"] == ["v1", "v2"] and block["actions"] == 1
    assert block["execution_state_root"] == "03" * 32 and block["events"][0]["data"]["to"] == [3, 0, 0]
    assert block["events_truncated"] is False


def test_new_heights_wake_the_reader_and_messages_are_built_once():
    src = FakeSource(tip=1)
    feed = BlockFeed(src)
    got: list[list[dict]] = []

    async def reader():
        got.append(await collect(feed, None, 3))

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            src.execution_height = 3
            feed.advanced()

    trio.run(main)
    for msgs in got:  # the stream starts at the tip (1), so only 2 and 3 follow
        assert [m.get("id") for m in msgs] == [None, "2", "3"]
    assert sorted(src.built) == [2, 3]  # two readers, one build per height


def test_a_resume_from_too_far_back_or_an_unheld_block_is_a_reset():
    far = FakeSource(tip=stream_mod.MAX_BACKLOG_HEIGHTS + 10)
    unheld = FakeSource(tip=10, first_held=6)

    async def main():
        a = await collect(BlockFeed(far), 1, 2)
        b = await collect(BlockFeed(unheld), 2, 2)
        return a, b

    a, b = trio.run(main)
    assert a[1]["event"] == "reset" and a[1]["data"]["height"] == far.execution_height
    assert b[1]["event"] == "reset" and "does not hold block 3" in b[1]["data"]["reason"]


def test_an_idle_stream_sends_keepalives():
    feed = BlockFeed(FakeSource(tip=4))

    async def main():
        return await collect(feed, None, 2)

    msgs = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert msgs[1] == {"comment": "keepalive"}


def test_resume_height_comes_from_the_query_or_last_event_id():
    def req(query: str = "", last: str | None = None):
        from starlette.requests import Request

        headers = [(b"last-event-id", last.encode())] if last is not None else []
        return Request({"type": "http", "query_string": query.encode(), "headers": headers})

    assert web._resume_height(req()) is None
    assert web._resume_height(req("from_height=7")) == 7
    assert web._resume_height(req(last="12")) == 12
    assert web._resume_height(req("from_height=3", last="12")) == 12  # a reconnect keeps the first URL
    for bad in ("from_height=-1", "from_height=x", "from_height=99999999999999999999"):
        with pytest.raises(ValueError, match="from_height must be a height"):
            web._resume_height(req(bad))


def test_the_stream_route_on_a_node(tmp_path, monkeypatch):
    home = single_validator_home(tmp_path / "solo", chain_id="stream-test")

    async def read_blocks(client: httpx.AsyncClient, n: int, **kw) -> list[dict]:
        msgs: list[dict] = []
        async with client.stream("GET", "/v1/stream", **kw) as resp:
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
            buf = ""
            async for text in resp.aiter_text():
                buf += text
                *done, buf = buf.split("\n\n")
                msgs.extend(m for chunk in done for m in parse_sse(chunk + "\n\n"))
                if sum(m.get("event") == "block" for m in msgs) >= n:
                    return msgs
        raise AssertionError(f"the stream ended early: {msgs}")

    async def main():
        async with running_node(home) as node:
            base = f"http://{node.config.rpc.listen}"
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                with trio.fail_after(60):  # a hang guard, not a timing check
                    msgs = await read_blocks(client, 5, params={"from_height": "0"})
                assert msgs[0]["event"] == "hello" and msgs[0]["data"]["chain_id"] == "stream-test"
                blocks = [m for m in msgs if m.get("event") == "block"]
                assert [b["data"]["height"] for b in blocks] == [1, 2, 3, 4, 5]
                assert all(b["id"] == str(b["data"]["height"]) for b in blocks)
                validator = (await client.get("/v1/status")).json()["validator"]
                for b in blocks:
                    record = (await client.get(f"/v1/execution/{b['data']['height']}")).json()
                    assert b["data"]["execution_state_root"] == record["execution_state_root"]
                    assert b["data"]["signers"] == [validator]
                with trio.fail_after(60):
                    resumed = await read_blocks(client, 2, headers={"Last-Event-ID": "3"})
                assert [m["data"]["height"] for m in resumed if m.get("event") == "block"] == [4, 5]

                r = await client.get("/v1/stream", params={"from_height": "x"})
                assert r.status_code == 400 and r.json()["code"] == "bad_query"
                monkeypatch.setattr(web, "MAX_SUBSCRIBERS", 0)
                r = await client.get("/v1/stream")
                assert r.status_code == 503 and r.json()["code"] == "too_many_streams" and r.headers["Retry-After"]
                monkeypatch.undo()
                assert node.feed.subscribers == 0  # every finished stream gave its slot back
                metrics = (await client.get("/metrics")).text
                assert "awnode_stream_subscribers 0.0" in metrics

                for bad in ("../api.py", ".hidden.js", "x.py", "nope.js"):
                    r = await client.get(f"/viewer/{bad}")
                    assert r.status_code == 404, bad

    trio.run(main)
