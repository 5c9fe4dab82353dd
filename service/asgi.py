"""Small raw-ASGI helpers (the simulator and the gateway): bodies, responses, streams, resets.

Job: the few raw-ASGI moves the simulator and `turnout gateway` need, kept out of
their handlers.

Rules:
- Responses always carry `content-length` (non-streaming) so clients never
  wait for a close.
- `abort_connection` drops the TCP connection without a single byte of
  response. Uvicorn does not put the transport in the ASGI scope; its `send`
  is a bound method of the request cycle, whose `transport` we abort, then we
  wait for uvicorn to notice the disconnect so it does not answer 500 for us.
  On a server without that shape we fall back to a truncated response (a
  client still sees a broken connection, not a status).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

__all__ = [
    "JSON",
    "BodyTooLarge",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "Stream",
    "abort_connection",
    "header",
    "read_body",
    "respond",
    "start_stream",
    "wait_for_disconnect",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = Iterable[tuple[bytes, bytes]]

JSON = b"application/json"
_DISCONNECT_GRACE_S = 2.0


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of request header `name` (lower-case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class BodyTooLarge(Exception):
    """A request body past `read_body`'s limit (the rest is not read)."""


async def read_body(receive: Receive, limit: int | None = None) -> bytes:
    """The whole request body (empty when the client went away); `BodyTooLarge` as soon
    as it passes `limit` bytes, so an oversized body is never held whole."""
    parts: list[bytes] = []
    size, more = 0, True
    while more:
        message = await receive()
        part: bytes = message.get("body", b"")
        size += len(part)
        if limit is not None and size > limit:
            raise BodyTooLarge(size)
        parts.append(part)
        more = bool(message.get("more_body"))
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def respond(
    send: Send, status: int, body: bytes, headers: Headers = (), content_type: bytes = JSON
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Stream:
    """An open streaming response: `write` pieces, then `end` once."""

    def __init__(self, send: Send) -> None:
        self._send = send

    async def write(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, data: bytes = b"") -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": False})


async def start_stream(send: Send, headers: Headers = ()) -> Stream:
    """Send SSE response headers and return the open stream."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream"),
                (b"cache-control", b"no-cache"),
                *headers,
            ],
        }
    )
    return Stream(send)


async def wait_for_disconnect(receive: Receive) -> None:
    """Return once the client has closed the connection."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def abort_connection(send: Send, receive: Receive) -> None:
    """Close the connection abruptly, before any byte of a response."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None or not hasattr(transport, "abort"):
        await _truncated_response(send)
        return
    transport.abort()
    try:
        async with asyncio.timeout(_DISCONNECT_GRACE_S):
            await wait_for_disconnect(receive)
    except TimeoutError:
        pass


async def _truncated_response(send: Send) -> None:
    """Fallback reset: promise a body, send none; the server closes the socket."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", JSON), (b"content-length", b"1000")],
        }
    )
    await send({"type": "http.response.body", "body": b"{", "more_body": True})
