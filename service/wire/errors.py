"""The one error the wire codecs raise for bad input: `WireError(code, detail, path)`.

Rules:
- a codec never lets a third-party decode exception escape: msgspec errors
  are translated here, in `from_msgspec`, and nowhere else;
- `code` is a short stable token (one of the constants below, or a codec's
  own), fit for a `turnout-error` DLQ header and for tests to match on;
- `detail` is human text; `path` says where: a JSON path (`$.usage.total_tokens`,
  as msgspec reports it), `headers.<name>` for a Kafka header, `key` for the
  record key, or None when the input is unreadable as a whole.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

__all__ = [
    "INVALID_HEADER",
    "INVALID_KEY",
    "MALFORMED_JSON",
    "MISSING_HEADER",
    "MISSING_KEY",
    "SCHEMA_VIOLATION",
    "UNSUPPORTED_CONTENT_TYPE",
    "WireError",
    "from_msgspec",
]

MALFORMED_JSON: Final = "malformed_json"
"""The value is not JSON (or not UTF-8, or empty)."""
SCHEMA_VIOLATION: Final = "schema_violation"
"""Valid JSON of the wrong shape: a wrong type, a missing required field."""
MISSING_HEADER: Final = "missing_header"
INVALID_HEADER: Final = "invalid_header"
UNSUPPORTED_CONTENT_TYPE: Final = "unsupported_content_type"
MISSING_KEY: Final = "missing_key"
INVALID_KEY: Final = "invalid_key"


class WireError(ValueError):
    """Bad bytes from outside: what is wrong (`code`), in words (`detail`), and where (`path`).

    An intake record that was readable enough to name its request carries
    `request_id` (and its `tenant` and `reply_to` where those are valid), so
    the request can still be answered.
    """

    code: str
    detail: str
    path: str | None
    request_id: str | None = None
    tenant: str | None = None
    reply_to: str | None = None
    body: dict[str, Any] | None = None  # the JSON object that broke the schema, if it was one

    def __init__(self, code: str, detail: str, path: str | None = None) -> None:
        super().__init__(code, detail, path)
        self.code = code
        self.detail = detail
        self.path = path

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return f"{self.code}: {self.detail}{where}"


_AT = re.compile(r"(?P<detail>.*?)(?: - at `(?P<path>[^`]*)`)?", re.DOTALL)
_MISSING_FIELD = re.compile(r"Object missing required field `(?P<field>[^`]*)`")


def from_msgspec(exc: msgspec.MsgspecError | UnicodeDecodeError | RecursionError) -> WireError:
    """Translate a msgspec decode error, keeping the JSON path it reports.

    A missing required field is reported at the field itself
    (`$.usage.total_tokens`), not at the object that lacks it.
    """
    if isinstance(exc, UnicodeDecodeError):  # msgspec's error for a string that is not UTF-8
        return WireError(MALFORMED_JSON, f"a JSON string is not valid UTF-8: {exc.reason}")
    if isinstance(exc, RecursionError):  # msgspec's for JSON nested past Python's stack
        return WireError(MALFORMED_JSON, "JSON nested too deep to read")
    if not isinstance(exc, msgspec.ValidationError):
        return WireError(MALFORMED_JSON, str(exc))
    match = _AT.fullmatch(str(exc))
    assert match is not None  # the pattern matches any text
    detail = match["detail"]
    path = match["path"] or "$"
    missing = _MISSING_FIELD.fullmatch(detail)
    if missing is not None:
        path = f"{path}.{missing['field']}"
    return WireError(SCHEMA_VIOLATION, detail, path)
