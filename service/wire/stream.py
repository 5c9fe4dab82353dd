"""Streamed answers: OpenAI `chat.completion.chunk` objects, merged, assembled, recorded.

    merge(into, chunk)        -> chunk   several deltas as one (coalescing, assembly)
    completion(merged)        -> the assembled `chat.completion`
    has_token(chunk)          -> does it carry output (the first-token gate)
    delta_chars(chunk)        -> characters of output it carries
    chunk_record(rid, seq, b) -> the chunk record's value (docs/reference/records.md)
    chunk_of(value)           -> the chunk's JSON bytes back, without decoding them

Rules:
- Merging keeps a stream's meaning: per choice `index`, text deltas (`content`,
  `reasoning`, `reasoning_content`, `refusal`) are concatenated, tool-call deltas
  are merged by their `index` (arguments concatenated, id, type and name kept from
  the first that has them), list deltas (`reasoning_details`, logprobs' `content`)
  are extended; `finish_reason` and `usage` keep the last one given; top-level keys
  (`id`, `model`, `created`) keep the first. Merging a stream chunk by chunk and
  merging it in any grouping give the same result (tested).
- Inputs are never changed: `merge` copies what it extends.
- The chunk record's layout is fixed (`{"request_id":…,"seq":N,"chunk":…}`), so a
  reader can slice the chunk's bytes out and write them as they are.

Pure: no I/O.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

__all__ = [
    "ATTEMPT_HEADER",
    "COALESCED_HEADER",
    "MODEL_HEADER",
    "SEQ_HEADER",
    "STREAM_HEADER",
    "chunk_of",
    "chunk_record",
    "completion",
    "delta_chars",
    "has_token",
    "merge",
    "trim",
]

STREAM_HEADER: Final = "turnout-stream"  # "chunk" | "end"
SEQ_HEADER: Final = "turnout-seq"
MODEL_HEADER: Final = "turnout-model"  # the model serving the stream (as routed)
ATTEMPT_HEADER: Final = "turnout-attempt"
COALESCED_HEADER: Final = "turnout-coalesced"  # "1" on the copies a coalesced request gets
_TEXT: Final = ("content", "reasoning", "reasoning_content", "refusal")
_CHUNK_KEY: Final = b',"chunk":'
_encode: Final = msgspec.json.Encoder().encode


def has_token(chunk: dict[str, Any]) -> bool:
    """Whether the chunk carries output: text, reasoning or a tool call (not only a role)."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if any(delta.get(k) for k in _TEXT) or delta.get("tool_calls"):
            return True
    return False


def delta_chars(chunk: dict[str, Any]) -> int:
    """Characters of output in the chunk (text, reasoning, tool-call arguments)."""
    chars = 0
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        for key in _TEXT:
            value = delta.get(key)
            if isinstance(value, str):
                chars += len(value)
        for call in delta.get("tool_calls") or ():
            fn = call.get("function") or {}
            for part in (fn.get("name"), fn.get("arguments")):
                if isinstance(part, str):
                    chars += len(part)
    return chars


def merge(into: dict[str, Any] | None, chunk: dict[str, Any]) -> dict[str, Any]:
    """`into` with `chunk`'s deltas appended (a new dict; neither input changes)."""
    if into is None:
        return merge({}, chunk)
    out = dict(into)
    for key, value in chunk.items():
        if key == "choices":
            continue
        if key == "usage":
            if value is not None:
                out[key] = value
        elif key not in out or out[key] is None:
            out[key] = value
    choices = list(out.get("choices") or ())
    by_index = {c.get("index", 0): n for n, c in enumerate(choices)}
    for choice in chunk.get("choices") or ():
        index = choice.get("index", 0)
        n = by_index.get(index)
        if n is None:
            by_index[index] = len(choices)
            choices.append(_merge_choice({"index": index}, choice))
        else:
            choices[n] = _merge_choice(choices[n], choice)
    if choices or "choices" in chunk or "choices" in out:
        out["choices"] = choices
    return out


def _merge_choice(into: dict[str, Any], choice: dict[str, Any]) -> dict[str, Any]:
    out = dict(into)
    for key, value in choice.items():
        if key == "delta":
            out["delta"] = _merge_delta(out.get("delta") or {}, value or {})
        elif key == "finish_reason":
            if value is not None:
                out[key] = value
            else:
                out.setdefault(key, None)
        elif key == "logprobs":
            out[key] = _merge_logprobs(out.get(key), value)
        elif key not in out or out[key] is None:
            out[key] = value
    return out


def _merge_delta(into: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    out = dict(into)
    for key, value in delta.items():
        if key in _TEXT:
            if isinstance(value, str):
                before = out.get(key)
                out[key] = before + value if isinstance(before, str) else value
            elif key not in out:
                out[key] = value
        elif key == "tool_calls":
            out[key] = _merge_tool_calls(out.get(key) or [], value or [])
        elif isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = [*out[key], *value]
        elif key not in out or out[key] is None:
            out[key] = value
    return out


def _merge_tool_calls(into: list[dict[str, Any]], calls: list[dict[str, Any]]) -> list[Any]:
    out = list(into)
    by_index = {c.get("index", n): n for n, c in enumerate(out)}
    for call in calls:
        index = call.get("index", len(out))
        n = by_index.get(index)
        if n is None:
            by_index[index] = len(out)
            out.append(_merge_call({}, call))
        else:
            out[n] = _merge_call(out[n], call)
    return out


def _merge_call(into: dict[str, Any], call: dict[str, Any]) -> dict[str, Any]:
    out = dict(into)
    for key, value in call.items():
        if key == "function" and isinstance(value, dict):
            fn = dict(out.get("function") or {})
            for part, text in value.items():
                if part == "arguments" and isinstance(text, str):
                    fn[part] = fn.get(part, "") + text
                elif part not in fn or fn[part] is None:
                    fn[part] = text
            out["function"] = fn
        elif key not in out or out[key] is None:
            out[key] = value
    return out


def _merge_logprobs(into: Any, value: Any) -> Any:
    if not isinstance(value, dict):
        return into if value is None else value
    if not isinstance(into, dict):
        return value
    out = dict(into)
    for key, items in value.items():
        if isinstance(items, list) and isinstance(out.get(key), list):
            out[key] = [*out[key], *items]
        elif items is not None:
            out[key] = items
    return out


def trim(chunk: dict[str, Any], keep: int) -> dict[str, Any]:
    """`chunk` with at most `keep` characters of output (text first, then tool-call
    arguments), every choice ended `finish_reason: "length"`: where a stream is cut."""
    left = max(keep, 0)
    choices = []
    for choice in chunk.get("choices") or ():
        delta = dict(choice.get("delta") or {})
        for key in _TEXT:
            value = delta.get(key)
            if isinstance(value, str):
                delta[key], left = value[:left], max(left - len(value), 0)
        calls = []
        for call in delta.get("tool_calls") or ():
            fn = dict(call.get("function") or {})
            if isinstance(fn.get("arguments"), str):
                text = fn["arguments"]
                fn["arguments"], left = text[:left], max(left - len(text), 0)
            calls.append({**call, "function": fn})
        if calls:
            delta["tool_calls"] = calls
        choices.append({**choice, "delta": delta, "finish_reason": "length"})
    return {**chunk, "choices": choices}


def completion(merged: dict[str, Any]) -> dict[str, Any]:
    """The `chat.completion` a merged stream amounts to (what a non-streamed call returns)."""
    choices = []
    for choice in sorted(merged.get("choices") or (), key=lambda c: c.get("index", 0)):
        delta = choice.get("delta") or {}
        message: dict[str, Any] = {"role": delta.get("role") or "assistant"}
        message["content"] = delta.get("content") if delta.get("content") is not None else ""
        for key, value in delta.items():
            if key not in ("role", "content") and value is not None:
                message[key] = value
        out: dict[str, Any] = {
            "index": choice.get("index", 0),
            "message": message,
            "finish_reason": choice.get("finish_reason"),
        }
        for key, value in choice.items():
            if key not in out and key != "delta" and value is not None:
                out[key] = value
        choices.append(out)
    doc: dict[str, Any] = {
        "id": merged.get("id"),
        "object": "chat.completion",
        "created": merged.get("created"),
        "model": merged.get("model"),
        "choices": choices,
    }
    for key, value in merged.items():
        if key not in doc and key != "object" and value is not None:
            doc[key] = value
    return doc


def chunk_record(request_id: str, seq: int, chunk: bytes) -> bytes:
    """A chunk record's value: `{"request_id": …, "seq": N, "chunk": {…}}`."""
    return b'{"request_id":' + _encode(request_id) + b',"seq":%d' % seq + _CHUNK_KEY + chunk + b"}"


def chunk_of(value: bytes) -> bytes:
    """The chunk's JSON bytes in a chunk record's value (ValueError if it is not one)."""
    at = value.find(_CHUNK_KEY)
    if at < 0 or not value.endswith(b"}"):
        raise ValueError("not a Turnout chunk record")
    return value[at + len(_CHUNK_KEY) : -1]
