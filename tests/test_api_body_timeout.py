"""A client that sends part of a request body and stalls gets 408 ``body_timeout`` and loses the
connection, instead of holding it (a real in-process node, a raw socket)."""

from __future__ import annotations

import trio

from .node_harness import running_node, single_validator_home


def test_a_stalled_body_gets_408(tmp_path):
    home = single_validator_home(tmp_path / "solo", chain_id="body-timeout")

    async def main():
        async with running_node(home) as node:
            host, port = node.config.rpc.listen.rsplit(":", 1)
            stream = await trio.open_tcp_stream(host, int(port))
            async with stream:
                await stream.send_all(b"POST /v1/actions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                      b"Content-Length: 1000\r\n\r\n{\"body\":")
                received = b""
                with trio.fail_after(60):  # a hang guard, not a timing check
                    while b"\r\n\r\n" not in received or b"}" not in received.split(b"\r\n\r\n", 1)[1]:
                        chunk = await stream.receive_some(4096)
                        if not chunk:
                            break
                        received += chunk
                    closed = await stream.receive_some(4096) == b""  # and the connection is not held
            return received.decode(errors="replace"), closed

    answer, closed = trio.run(main)
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert '"code":"body_timeout"' in answer.replace(" ", ""), answer
    assert closed


def test_a_stalled_request_head_is_closed(tmp_path):
    """A client that sends part of a request head and stalls loses its connection (the
    keep-alive timeout: the connection is idle until a whole head arrived)."""
    home = single_validator_home(tmp_path / "solo", chain_id="head-timeout")

    async def main():
        async with running_node(home) as node:
            host, port = node.config.rpc.listen.rsplit(":", 1)
            stream = await trio.open_tcp_stream(host, int(port))
            async with stream:
                await stream.send_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
                with trio.fail_after(60):  # a hang guard, not a timing check
                    return await stream.receive_some(4096)

    assert trio.run(main) == b""

