"""Request bodies have a read deadline (--body-timeout): a sender that stalls gets 408 and its
connection closed while the server goes on serving others; a steady sender is not cut off."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import orjson
import pytest

from rootml.errors import RequestTimeout
from rootml.serve._http import receive_body
from tests.serve.conftest import N_FEATURES, Server

BODY_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def deadline_server(repo, tmp_path_factory):
    srv = Server(
        repo, tmp_path_factory.mktemp("deadline") / "serve.log", "--body-timeout", str(BODY_TIMEOUT)
    )
    yield srv
    srv.stop()


def _stalled(server, path: str, declared: int, sent: bytes) -> socket.socket:
    """A connection that sends headers declaring `declared` body bytes, then `sent`, then stalls."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + sent)
    return sock


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("path", ["/v2/models/mlp/infer", "/v2/repository/index"])
def test_a_stalled_body_gets_408_and_others_are_served_meanwhile(deadline_server, path):
    began = time.monotonic()
    sock = _stalled(deadline_server, path, 100_000, b'{"inputs": [')
    try:
        # While that body never comes, other clients are answered.
        for _ in range(3):
            assert httpx.get(f"{deadline_server.url}/v2/health/live", timeout=30).status_code == 200
        answer = _answer(sock)  # the server closes the connection after its answer
    finally:
        sock.close()
    assert time.monotonic() - began >= BODY_TIMEOUT * 0.9
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"connection: close" in head.lower()
    assert "did not arrive in time" in orjson.loads(body)["error"]
    assert httpx.get(f"{deadline_server.url}/v2/health/ready", timeout=30).status_code == 200


def test_a_steady_sender_of_a_large_body_is_not_cut_off(deadline_server):
    # ~8 MiB sent in 16 parts over ~2 s: longer than the body timeout, much faster than 1 MiB/s.
    rows = (8 << 20) // (N_FEATURES * 14)  # ~14 JSON bytes per value and its mask
    doc = {
        "inputs": [
            {"name": "features", "datatype": "FP32", "shape": [rows, N_FEATURES],
             "data": [0.123456] * (rows * N_FEATURES)},
            {"name": "mask", "datatype": "BOOL", "shape": [rows, N_FEATURES],
             "data": [True] * (rows * N_FEATURES)},
        ]
    }  # fmt: skip
    body = orjson.dumps(doc)
    sock = _stalled(deadline_server, "/v2/models/mlp/infer", len(body), b"")
    try:
        part = -(-len(body) // 16)
        for i in range(0, len(body), part):
            sock.sendall(body[i : i + part])
            time.sleep(BODY_TIMEOUT / 14)
        sock.settimeout(120)
        head = sock.recv(65536).partition(b"\r\n")[0]
    finally:
        sock.close()
    # Too many rows for max_batch_size: 400 once the whole body was read, not 408.
    assert head.startswith(b"HTTP/1.1 400"), head


def _receiver(parts: list[bytes], gaps: list[float]):
    """ASGI receive: `parts` of a body, each after its gap in s (the last one ends it); None
    gap: never (a stalled sender)."""
    it = iter(zip(parts, gaps))

    async def receive() -> dict:
        part, gap = next(it)
        await asyncio.sleep(3600 if gap is None else gap)
        return {"type": "http.request", "body": part, "more_body": part != parts[-1]}

    return receive


def test_receive_body_deadline_without_http():
    """receive_body: a stalled body raises RequestTimeout after its timeout (never before);
    a body sent in time comes back whole; a cancellation from elsewhere stays a cancellation,
    and a later body on the same loop still gets its own deadline."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(RequestTimeout, match="did not arrive in time"):
            await receive_body(_receiver([b"ab", b"cd"], [0.0, None]), 100, timeout=0.3)
        assert loop.time() - began >= 0.3
        body = await receive_body(_receiver([b"ab", b"cd"], [0.05, 0.05]), 100, timeout=5)
        assert body == b"abcd"
        task = asyncio.ensure_future(receive_body(_receiver([b"x"], [None]), 100, timeout=60))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(RequestTimeout):
            await receive_body(_receiver([b"x"], [None]), 100, timeout=0.2)

    asyncio.run(main())
