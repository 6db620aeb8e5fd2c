"""The coordinator's REST app behind a real uvicorn server (serve_asgi, port 0): what a hostile
client can make it read and hold. Credentials are checked and an announced or streamed body over
the limit is refused before the body has arrived, so the answers come while the client is still
sending; memory stays bounded however much is sent; headers over the limit and requests that are
not HTTP get the JSON error shape too (from the server, before any app runs)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import tracemalloc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from tidal.coordinator.control import Control
from tidal.coordinator.metrics import CoordinatorCounters
from tidal.coordinator.rest import create_app
from tidal.core.tokens import TokenTable
from tidal.transport.http import MAX_HEADER_BYTES, HeaderLimit, serve_asgi
from tidal.transport.http_gate import MAX_BODY_BYTES
from tidal.transport.tls import SecurityConfig

ADMIN = "a" * 40
SECURE = SecurityConfig(
    tokens=TokenTable.parse(json.dumps({"tokens": [{"token": ADMIN, "role": "admin", "identity": "alice"}]}))
)
REPLY_TIMEOUT_S = 30.0  # a wait for an answer that today's code would never send before the body ends
CHUNK = b"x" * (64 * 1024)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    """The app served as the coordinator serves it, on its own loop in a background thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="rest-server", daemon=True)
    thread.start()
    app = create_app(Control(CoordinatorCounters(CollectorRegistry()), 1.0, 30.0), SECURE)

    async def start():  # serve_asgi needs the running loop
        return serve_asgi(app, "127.0.0.1", 0, SECURE)

    server, task, bound = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield bound
    finally:

        async def stop() -> None:
            server.should_exit = True
            await task

        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, str]:
        assert self.headers["content-type"].startswith("application/json"), (self.status, self.headers, self.body)
        error = json.loads(self.body)["error"]
        assert error["code"] and error["message"], error
        return error


def _read_reply(sock: socket.socket) -> Reply:
    """One HTTP/1.1 response with a content-length, read from the socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        assert part, f"connection closed before a full reply: {data!r}"
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers["content-length"])
    while len(body) < length:
        part = sock.recv(65536)
        assert part, "connection closed inside the reply body"
        body += part
    return Reply(int(status_line.split()[1]), headers, body[:length])


def _send_then_read(port: int, head: bytes, body_parts: Iterable[bytes] = ()) -> Reply:
    """Sends the request head and the given body parts, NOT the rest of the body, then reads."""
    with socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT_S) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        return _read_reply(sock)


def _head(extra: str, method: str = "POST", path: str = "/v1/jobs") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nhost: tidal\r\ncontent-type: application/json\r\n{extra}\r\n".encode()


def test_401_comes_before_a_64_mib_body_is_sent(port: int) -> None:
    reply = _send_then_read(port, _head(f"content-length: {64 * 1024 * 1024}\r\n"), [b"{nope"])
    assert reply.status == 401 and reply.error()["code"] == "UNAUTHENTICATED"


def test_413_by_content_length_comes_before_the_body(port: int) -> None:
    head = _head(f"authorization: Bearer {ADMIN}\r\ncontent-length: {MAX_BODY_BYTES + 1}\r\n")
    reply = _send_then_read(port, head, [b"{"])
    assert reply.status == 413 and reply.error()["code"] == "RESOURCE_EXHAUSTED"


def test_413_while_a_chunked_body_streams_in(port: int) -> None:
    """No length announced: the server counts while reading and answers once the limit is
    passed, while the body has not ended (no terminating chunk is ever sent)."""
    chunks = MAX_BODY_BYTES // len(CHUNK) + 2
    parts = (f"{len(CHUNK):x}\r\n".encode() + CHUNK + b"\r\n" for _ in range(chunks))
    head = _head(f"authorization: Bearer {ADMIN}\r\ntransfer-encoding: chunked\r\n")
    reply = _send_then_read(port, head, parts)
    assert reply.status == 413 and reply.error()["code"] == "RESOURCE_EXHAUSTED"


@pytest.mark.parametrize("token", ["", ADMIN], ids=["no token", "admin token"])
def test_a_large_streamed_body_holds_no_more_than_the_limit(port: int, token: str) -> None:
    """16 MiB sent in full (chunked): the server answers (401, or 413 at the limit) and drops
    the rest as it arrives. Client and server share this process, so tracemalloc sees both;
    the client reuses one chunk object."""
    total_chunks = 16 * 1024 * 1024 // len(CHUNK)
    headers = {"content-type": "application/json"} | ({"authorization": f"Bearer {token}"} if token else {})
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=REPLY_TIMEOUT_S) as client:
            reply = client.post("/v1/jobs", content=(CHUNK for _ in range(total_chunks)), headers=headers)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_BODY_BYTES, f"peak {peak} bytes traced while 16 MiB streamed in"
    assert reply.status_code == (413 if token else 401), reply.text


@pytest.mark.parametrize("blank_line", ["\r\n", ""], ids=["whole request", "headers never end"])
def test_headers_over_the_limit_get_a_json_431(port: int, blank_line: str) -> None:
    """Whole, the request may reach the app (HeaderLimit answers); cut short, h11 refuses it
    once its buffer passes the limit (the protocol answers): the same JSON either way."""
    head = f"GET /v1/jobs HTTP/1.1\r\nhost: tidal\r\nx-padding: {'p' * 200_000}\r\n{blank_line}"
    reply = _send_then_read(port, head.encode())
    assert reply.status == 431, reply
    error = reply.error()
    assert error["code"] == "RESOURCE_EXHAUSTED" and str(MAX_HEADER_BYTES) in error["message"]


def test_header_limit_on_a_request_parsed_whole() -> None:
    """The app-side check alone (no h11 in between), with a limit of its own."""
    app = create_app(Control(CoordinatorCounters(CollectorRegistry()), 1.0, 30.0), SecurityConfig())
    with TestClient(HeaderLimit(app, 1024)) as client:
        reply = client.get("/v1/jobs", headers={"x-padding": "p" * 1024})
        assert reply.status_code == 431 and reply.json()["error"]["code"] == "RESOURCE_EXHAUSTED", reply.text
        assert "1024" in reply.json()["error"]["message"]
        assert client.get("/v1/jobs", headers={"x-padding": "p" * 512}).status_code == 200


def test_a_request_that_is_not_http_gets_a_json_400(port: int) -> None:
    reply = _send_then_read(port, b"NOT HTTP AT ALL\r\n\r\n")
    assert reply.status == 400, reply
    assert reply.error()["code"] == "INVALID_ARGUMENT"


def test_the_server_still_answers_after_all_that(port: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=REPLY_TIMEOUT_S) as client:
        assert client.get("/v1/jobs", headers={"authorization": f"Bearer {ADMIN}"}).json() == {"jobs": []}
