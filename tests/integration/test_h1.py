"""The lean HTTP/1.1 pool (`turnout.service.upstream.h1`) against real servers on loopback.

The simulator for what the router meets every day (keep-alive reuse, a bounded pool,
deadlines, cancellation), and small scripted asyncio servers for what a real upstream
or a middlebox may do: close after the answer, answer chunked or up to the close, cut
an answer short, answer with something that is not HTTP, or speak TLS. After each
trouble the pool must have thrown the connection away, and the next call must work.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from turnout.service.upstream.client import ClientOptions, UpstreamClient
from turnout.service.upstream.h1 import H1ConnectError, H1Pool, H1ProtocolError, H1Response
from turnout.service.upstream.simulator import RunningSimulator, SimulatorOptions, start_in_thread
from turnout.service.upstream.simulator.cli import load_scenario

CHAT = msgspec.json.encode({
    "model": "openai/gpt-4o-mini", "stream": False, "max_tokens": 16,
    "messages": [{"role": "user", "content": "hello"}],
})  # fmt: skip
HEADERS = {"content-type": "application/json", "accept": "application/json"}
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSimulator]:
    with start_in_thread(SimulatorOptions()) as running:
        yield running


@pytest.fixture(scope="module")
def slow_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSimulator]:
    path = tmp_path_factory.mktemp("slow") / "scenario.toml"
    path.write_text('[[rule]]\nmodel = "openai/*"\nlatency_ms = 400\n', encoding="utf-8")
    with start_in_thread(SimulatorOptions(scenario=load_scenario(str(path)))) as running:
        yield running


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Start a scripted server: `await serve(handler, tls=None)` -> its base URL."""
    servers: list[asyncio.Server] = []

    async def start(handler: Handler, tls: ssl.SSLContext | None = None) -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=tls)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"{'https' if tls else 'http'}://127.0.0.1:{port}/api/v1"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def chat(pool: H1Pool, deadline_s: float = 5.0) -> Awaitable[H1Response]:
    return pool.request("POST", "/chat/completions", CHAT, deadline_s)


def _ok(body: bytes = b'{"ok": true}', extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + extra
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


# --------------------------------------------------------------------------- the simulator


async def test_calls_reuse_one_keep_alive_connection(sim: RunningSimulator) -> None:
    pool = H1Pool(sim.base_url, headers=HEADERS)
    try:
        for _ in range(20):
            status, body, headers = await chat(pool)
            assert status == 200 and msgspec.json.decode(body)["object"] == "chat.completion"
            assert headers["content-type"].startswith("application/json")
    finally:
        pool.close()
    assert pool.connects == 1


async def test_concurrent_calls_stay_within_the_pool_size(sim: RunningSimulator) -> None:
    pool = H1Pool(sim.base_url, headers=HEADERS, size=2)
    try:
        answers = await asyncio.gather(*(chat(pool) for _ in range(12)))
    finally:
        pool.close()
    assert [status for status, _, _ in answers] == [200] * 12
    assert pool.connects == 2


async def test_the_deadline_fails_the_call_and_spoils_its_connection(
    slow_sim: RunningSimulator,
) -> None:
    pool = H1Pool(slow_sim.base_url, headers=HEADERS)
    try:
        with pytest.raises(TimeoutError, match=r"no complete answer within 0\.1 s"):
            await chat(pool, 0.1)
        status, _, _ = await chat(pool)
    finally:
        pool.close()
    # the late answer to the first call never reaches the second: a new connection
    assert status == 200 and pool.connects == 2


async def test_a_deadline_also_covers_waiting_for_a_free_connection(
    slow_sim: RunningSimulator,
) -> None:
    pool = H1Pool(slow_sim.base_url, headers=HEADERS, size=1)
    try:
        busy = asyncio.create_task(chat(pool))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await chat(pool, 0.1)
        assert (await busy)[0] == 200
    finally:
        pool.close()


async def test_a_cancelled_call_frees_its_slot_and_its_connection(
    slow_sim: RunningSimulator,
) -> None:
    pool = H1Pool(slow_sim.base_url, headers=HEADERS, size=1)
    try:
        first = asyncio.create_task(chat(pool))
        queued = asyncio.create_task(chat(pool))
        await asyncio.sleep(0.05)
        first.cancel()
        status, _, _ = await asyncio.wait_for(queued, 5.0)
    finally:
        pool.close()
    assert first.cancelled() and status == 200 and pool.connects == 2


async def test_the_client_classifies_the_pools_failures(
    serve: Callable[..., Awaitable[str]],
) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"SPDY/9 nonsense\r\n\r\n")
        await writer.drain()
        writer.close()

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"partial":')
        await writer.drain()
        writer.close()

    cases = {
        await serve(garbage): "malformed_response",
        await serve(cut): "connection_reset",
        f"http://127.0.0.1:{closed_port()}/api/v1": "connect_error",
    }
    for base_url, error_class in cases.items():
        options = ClientOptions(base_url=base_url, timeout_s=5.0, connect_timeout_s=1.0)
        async with UpstreamClient(options, environ={}) as client:
            result = await client.call("openai/gpt-4o-mini", {"messages": []})
        assert (result.ok, result.error_class) == (False, error_class), base_url


# --------------------------------------------------------------------------- scripted servers


async def test_connection_close_is_honoured(serve: Callable[..., Awaitable[str]]) -> None:
    served = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await _read_request(reader)
        served += 1
        writer.write(_ok(extra=b"connection: close\r\n"))
        await writer.drain()
        await asyncio.sleep(0.2)  # the pool must not wait for the close to move on
        writer.close()

    pool = H1Pool(await serve(handler), headers=HEADERS)
    try:
        for _ in range(3):
            assert (await chat(pool))[0] == 200
    finally:
        pool.close()
    assert served == 3 and pool.connects == 3


async def test_chunked_and_close_delimited_bodies(serve: Callable[..., Awaitable[str]]) -> None:
    body = b'{"choices": [{"message": {"content": "' + b"x" * 5000 + b'"}}]}'

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):  # two answers on one connection
            await _read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for i in range(0, len(body), 1000):
                piece = body[i : i + 1000]
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        writer.close()

    async def to_the_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    chunked_pool = H1Pool(await serve(chunked), headers=HEADERS)
    closing_pool = H1Pool(await serve(to_the_close), headers=HEADERS)
    try:
        for _ in range(2):
            assert await chunked_pool.request("POST", "/x", CHAT, 5.0) == (
                200, body, {"transfer-encoding": "chunked"}
            )  # fmt: skip
        status, got, _ = await closing_pool.request("POST", "/x", CHAT, 5.0)
    finally:
        chunked_pool.close()
        closing_pool.close()
    assert chunked_pool.connects == 1
    assert (status, got) == (200, body)


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    serve: Callable[..., Awaitable[str]],
) -> None:
    async def one_answer_then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await _read_request(reader)
        writer.write(_ok())  # keep-alive by default, yet it goes away
        await writer.drain()
        writer.close()

    pool = H1Pool(await serve(one_answer_then_close), headers=HEADERS)
    try:
        assert (await pool.request("POST", "/x", CHAT, 5.0))[0] == 200
        await asyncio.sleep(0.1)  # the close arrives while the connection is idle
        assert (await pool.request("POST", "/x", CHAT, 5.0))[0] == 200
    finally:
        pool.close()
    assert pool.connects == 2


async def test_requests_carry_the_path_prefix_host_headers_and_length(
    serve: Callable[..., Awaitable[str]],
) -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _read_request(reader))
        writer.write(_ok())
        await writer.drain()
        writer.close()

    base_url = await serve(handler)
    pool = H1Pool(base_url, headers={**HEADERS, "authorization": "Bearer k"})
    try:
        await chat(pool)
    finally:
        pool.close()
    head, _, payload = seen[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    port = base_url.split(":")[2].split("/")[0]
    assert lines[0] == "POST /api/v1/chat/completions HTTP/1.1"
    assert f"Host: 127.0.0.1:{port}" in lines and "authorization: Bearer k" in lines
    assert f"content-length: {len(CHAT)}" in lines and payload == CHAT
    assert "user-agent: turnout" in lines
    assert "key" not in repr(pool) and "Bearer" not in repr(pool)


# --------------------------------------------------------------------------- streamed answers


def _sse_head() -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _first_piece(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read a request, answer with an SSE head and its first event `data: 1`."""
    await _read_request(reader)
    writer.write(_sse_head() + _chunk(b"data: 1\n\n"))
    await writer.drain()


async def test_a_streamed_body_comes_as_it_is_sent_and_the_connection_is_reused(
    serve: Callable[..., Awaitable[str]],
) -> None:
    seen: list[bytes] = []
    go_on = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            seen.append(await _read_request(reader))
            writer.write(_sse_head() + _chunk(b"data: 1\n\n"))
            await writer.drain()
            await go_on.wait()  # the rest only once the client has had the first piece
            writer.write(_chunk(b"data: 2\n\n") + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
        writer.close()

    pool = H1Pool(await serve(handler), headers=HEADERS)
    try:
        for _ in range(2):
            stream = await pool.open("POST", "/x", CHAT, 5.0, accept="text/event-stream")
            try:
                assert (stream.status, stream.headers["content-type"]) == (200, "text/event-stream")
                assert await anext(stream) == b"data: 1\n\n"
                go_on.set()
                assert await stream.read() == b"data: 2\n\ndata: [DONE]\n\n"
            finally:
                stream.close()
                go_on.clear()
    finally:
        pool.close()
    assert pool.connects == 1
    lines = seen[0].partition(b"\r\n\r\n")[0].decode().split("\r\n")
    assert [line for line in lines if line.startswith("accept:")] == ["accept: text/event-stream"]


async def test_a_stream_cut_short_raises_and_its_connection_is_not_reused(
    serve: Callable[..., Awaitable[str]],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _first_piece(reader, writer)
        await asyncio.sleep(0.05)
        writer.close()  # no terminating chunk

    pool = H1Pool(await serve(handler), headers=HEADERS)
    try:
        for _ in range(2):
            stream = await pool.open("POST", "/x", CHAT, 5.0)
            try:
                assert await anext(stream) == b"data: 1\n\n"
                with pytest.raises(ConnectionResetError, match="mid-answer"):
                    await anext(stream)
            finally:
                stream.close()
    finally:
        pool.close()
    assert pool.connects == 2


async def test_closing_a_stream_before_its_end_hangs_up_on_the_upstream(
    serve: Callable[..., Awaitable[str]],
) -> None:
    hung_up = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _first_piece(reader, writer)
        if await reader.read(1) == b"":  # what a generating upstream notices, and stops
            hung_up.set()
        writer.close()

    pool = H1Pool(await serve(handler), headers=HEADERS, size=1)
    try:
        stream = await pool.open("POST", "/x", CHAT, 5.0)
        assert await anext(stream) == b"data: 1\n\n"
        stream.close()
        stream.close()  # twice is once: the pool's one slot is free exactly once
        await asyncio.wait_for(hung_up.wait(), 5.0)
        again = await pool.open("POST", "/x", CHAT, 5.0)
        again.close()
    finally:
        pool.close()
    assert pool.connects == 2 and pool._busy == 0


async def test_an_unread_stream_holds_the_upstream_back_instead_of_buffering_it_all(
    serve: Callable[..., Awaitable[str]],
) -> None:
    piece = b"x" * 65536
    total = 48 * 1024 * 1024  # far more than loopback's socket buffers (~6 MiB here)
    sent = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
        while sent < total:
            writer.write(piece)
            await writer.drain()
            sent += len(piece)
        writer.close()

    pool = H1Pool(await serve(handler), headers=HEADERS)
    try:
        stream = await pool.open("POST", "/x", CHAT, 5.0)
        try:
            await asyncio.sleep(0.3)  # nobody reads
            assert sent < total / 3  # the socket's buffers, not the whole answer
            assert len(await stream.read()) == total
        finally:
            stream.close()
    finally:
        pool.close()


@pytest.mark.parametrize("streamed", [False, True], ids=["request", "open"])
async def test_an_interim_1xx_head_is_not_the_answer(
    serve: Callable[..., Awaitable[str]], streamed: bool
) -> None:
    """103 Early Hints (a CDN may send it) before the answer: the answer is the 200 after
    it, and the next request on the connection gets its own answer, not this one's body."""
    served = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        for body in (b"first", b"second"):
            await _read_request(reader)
            served += 1
            writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body))
            await writer.drain()
            await asyncio.sleep(0.05)  # the body after the heads
            writer.write(body)
            await writer.drain()
        writer.close()

    pool = H1Pool(await serve(handler), headers=HEADERS)
    try:
        if streamed:
            stream = await pool.open("POST", "/x", CHAT, 5.0)
            try:
                first = (stream.status, await stream.read())
            finally:
                stream.close()
        else:
            first = (await pool.request("POST", "/x", CHAT, 5.0))[:2]
        second = (await pool.request("POST", "/x", CHAT, 5.0))[:2]
    finally:
        pool.close()
    assert (first, second) == ((200, b"first"), (200, b"second"))
    assert served == 2 and pool.connects == 1


async def test_a_stream_whose_last_bytes_follow_its_done_ends_at_once_and_is_reused(
    serve: Callable[..., Awaitable[str]],
) -> None:
    """A server usually writes a chunked body's terminator after its generator ends, a
    moment after `data: [DONE]`. The call ends at `[DONE]` (the answer is not held up
    for it), and the terminator is read aside, so the connection goes back to the pool
    instead of being hung up on after every successful stream."""
    release = asyncio.Event()  # the terminator goes out only once the call has ended

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await _read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            chunk = {"id": "gen-1", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
            data = b"data: " + msgspec.json.encode(chunk) + b"\n\ndata: [DONE]\n\n"
            writer.write(_sse_head() + _chunk(data))
            await writer.drain()
            await release.wait()
            release.clear()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        writer.close()

    options = ClientOptions(base_url=await serve(handler), timeout_s=5.0, connect_timeout_s=1.0)
    async with UpstreamClient(options, environ={}) as client:
        h1 = client._h1
        assert h1 is not None

        async def on_chunk(chunk: dict[str, object]) -> None:
            pass

        for _ in range(3):
            outcome = await client.stream("m", {"messages": []}, on_chunk, ttft_timeout_s=5.0)
            assert outcome.result.ok and outcome.first_token_ms is not None
            release.set()  # only now: the call did not wait for the terminator
            for _ in range(100):  # the connection comes back once the terminator is read
                if h1._idle:
                    break
                await asyncio.sleep(0.01)
    assert h1.connects == 1 and h1._busy == 0


async def test_a_closed_stream_fails_its_reader_and_has_one_reader_at_a_time(
    serve: Callable[..., Awaitable[str]],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _first_piece(reader, writer)
        await reader.read(1)  # until the client hangs up
        writer.close()

    pool = H1Pool(await serve(handler), headers=HEADERS)
    try:
        stream = await pool.open("POST", "/x", CHAT, 5.0)
        assert await anext(stream) == b"data: 1\n\n"
        reading = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.01)
        with pytest.raises(RuntimeError, match="one reader at a time"):
            await anext(stream)
        stream.close()
        with pytest.raises(ConnectionAbortedError):
            await asyncio.wait_for(reading, 5.0)  # woken, not left waiting forever
        with pytest.raises(ConnectionAbortedError):
            await asyncio.wait_for(stream.read(), 5.0)
    finally:
        pool.close()


async def test_opening_a_stream_waits_for_its_head_only_until_the_deadline(
    slow_sim: RunningSimulator,
) -> None:
    pool = H1Pool(slow_sim.base_url, headers=HEADERS, size=1)
    try:
        with pytest.raises(TimeoutError, match=r"no complete answer within 0\.1 s"):
            await pool.open("POST", "/chat/completions", CHAT, 0.1)
        stream = await pool.open("POST", "/chat/completions", CHAT, 5.0)
        try:
            assert stream.status == 200 and b"chat.completion" in await stream.read()
        finally:
            stream.close()
    finally:
        pool.close()
    assert pool.connects == 2 and pool._busy == 0


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (made by Debian's openssl)."""
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_checks_the_certificate(
    serve: Callable[..., Awaitable[str]],
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key = certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(2):
                await _read_request(reader)
                writer.write(_ok())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    base_url = await serve(handler, tls)
    untrusting = H1Pool(base_url, headers=HEADERS)  # the system's CAs do not know it
    with pytest.raises(H1ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        await untrusting.request("POST", "/x", CHAT, 5.0)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # read when the pool makes its context
    trusting = H1Pool(base_url, headers=HEADERS)
    try:
        for _ in range(2):
            assert (await trusting.request("POST", "/x", CHAT, 5.0))[0] == 200
    finally:
        trusting.close()
    assert trusting.connects == 1


def test_only_http_and_https_urls_and_no_line_breaks_in_headers() -> None:
    with pytest.raises(ValueError, match="an http"):
        H1Pool("ftp://example.org/api", headers={})
    with pytest.raises(ValueError, match="x-team"):
        H1Pool("http://example.org/api", headers={"x-team": "a\r\nx-injected: 1"})
    assert issubclass(H1ProtocolError, Exception) and issubclass(H1ConnectError, OSError)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_bytes_past_an_answer_are_never_read_as_the_next_requests_answer(
    serve: Callable[..., Awaitable[str]],
) -> None:
    """An upstream that writes more than its Content-Length, the extra being the head of
    another answer, left that head in the parser: when the body of it came while the
    next request on the reused connection (another tenant's, maybe) was in flight, that
    request got it as its own answer. The connection is thrown away instead."""
    calls = 0
    forged = b'{"forged":1}'

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        here = 0  # requests on this connection
        try:
            while True:
                await _read_request(reader)
                calls, here = calls + 1, here + 1
                if calls == 1:  # its answer, then the head of a forged one
                    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(forged)
                    writer.write(_ok(b'{"n": 1}') + head)
                elif here == 2:  # on the same connection: the forged body, then the answer
                    writer.write(forged + _ok(b'{"n": %d}' % calls))
                else:
                    writer.write(_ok(b'{"n": %d}' % calls))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    pool = H1Pool(await serve(handler), headers=HEADERS)
    try:
        assert (await chat(pool))[1] == b'{"n": 1}'
        await asyncio.sleep(0.3)
        status, body, _ = await chat(pool)
        assert (status, body) == (200, b'{"n": 2}')
    finally:
        pool.close()
    assert pool.connects == 2


async def test_a_101_answer_and_a_reset_mid_body_are_errors_not_answers(
    serve: Callable[..., Awaitable[str]],
) -> None:
    """A 101 Switching Protocols escaped the parser's error handling (asyncio logged a
    fatal error and the call ended as a connection reset); a body delimited by the close
    and cut by a TCP reset was taken as the whole answer."""

    async def switching(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    pool = H1Pool(await serve(switching), headers=HEADERS)
    with pytest.raises(H1ProtocolError):
        await chat(pool)

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n" + b'{"partial"')
        await writer.drain()
        await asyncio.sleep(0.1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()  # linger 0: an RST, not a FIN

    pool = H1Pool(await serve(reset), headers=HEADERS)
    with pytest.raises(ConnectionResetError):
        await chat(pool)
