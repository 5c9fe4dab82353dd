"""Server-sent events: the one incremental parser of an upstream's `text/event-stream`.

    parser = SSEParser()
    for event in parser.feed(piece):   # bytes as they arrive, cut anywhere
        event.data, event.id, event.event

Rules (the WHATWG event-stream format, as OpenAI and OpenRouter send it):
- lines end with CRLF, LF or CR, also when the network cuts between CR and LF;
- a line starting with `:` is a comment (OpenRouter's `: OPENROUTER PROCESSING`
  keep-alives): counted in `comments`, never an event;
- `data:` lines accumulate (joined by LF) until a blank line dispatches them; a
  blank line with no data dispatches nothing; one space after the colon is dropped;
- `id:` sets the last event id (ignored if it holds NUL), `event:` the type;
  unknown fields and `retry:` are ignored;
- a leading UTF-8 BOM is dropped; bytes that are not UTF-8 are replaced, never raised;
- an event not ended by a blank line when the stream stops is not dispatched.

Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

__all__ = ["SSEEvent", "SSEParser", "encode_event"]

_EOL: Final = re.compile(rb"[\r\n]")
_BOM: Final = b"\xef\xbb\xbf"


class SSEEvent(msgspec.Struct, frozen=True):
    data: str
    event: str = "message"
    id: str | None = None


class SSEParser:
    """Feed bytes in any pieces; get the events completed so far."""

    __slots__ = ("_buf", "_data", "_event", "_id", "_skip_lf", "_started", "comments")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._skip_lf = False  # the last piece ended in CR: a leading LF belongs to it
        self._started = False
        self.comments = 0

    @property
    def last_event_id(self) -> str | None:
        return self._id

    def feed(self, piece: bytes) -> list[SSEEvent]:
        buf = self._buf + piece if self._buf else piece
        if not self._started:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                self._buf = buf
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[len(_BOM) :]
        if self._skip_lf and buf:
            self._skip_lf = False
            if buf[:1] == b"\n":
                buf = buf[1:]
        events: list[SSEEvent] = []
        start, end = 0, len(buf)
        while start < end:
            found = _EOL.search(buf, start)
            if found is None:
                break
            at = found.start()
            line = buf[start:at]
            if buf[at] == 0x0D:  # CR, maybe followed by LF
                if at + 1 < end:
                    start = at + 2 if buf[at + 1] == 0x0A else at + 1
                else:
                    start = at + 1
                    self._skip_lf = True
            else:
                start = at + 1
            event = self._line(line)
            if event is not None:
                events.append(event)
        self._buf = buf[start:]
        return events

    def _line(self, raw: bytes) -> SSEEvent | None:
        if not raw:
            return self._dispatch()
        line = raw.decode("utf-8", "replace")
        if line[0] == ":":
            self.comments += 1
            return None
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = SSEEvent(data="\n".join(self._data), event=self._event or "message", id=self._id)
        self._data = []
        self._event = ""
        return event


def encode_event(data: bytes, *, id: str | None = None) -> bytes:
    """One event as bytes to write (`data` holds no line break: JSON from msgspec)."""
    head = b"id: " + id.encode() + b"\n" if id is not None else b""
    return head + b"data: " + data + b"\n\n"
