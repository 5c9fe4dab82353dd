"""Gateway API keys: made once, stored only as hashes, mapped to tenants.

    key, line = create_key("acme")   # print both once; put `line` under [gateway.keys]
    KeyRing(cfg.gateway.keys).tenant("Bearer " + key) == "acme"

Rules:
- A key is `tk-` and 43 URL-safe characters (32 random bytes); the config holds
  only `"sha256:<hex>" = "tenant"`, so a leaked config leaks no key.
- A presented key is hashed and looked up; it is never logged or kept.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping

__all__ = ["KeyRing", "create_key", "digest"]


def digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def create_key(tenant: str) -> tuple[str, str]:
    """A new key and the config line that maps its hash to `tenant`."""
    key = "tk-" + secrets.token_urlsafe(32)
    return key, f'"{digest(key)}" = "{tenant}"'


class KeyRing:
    def __init__(self, keys: Mapping[str, str]) -> None:
        self._tenants = dict(keys)

    @property
    def open(self) -> bool:
        """No key configured: anyone may call, as the tenant they name."""
        return not self._tenants

    def tenant(self, authorization: str | None) -> str | None:
        """The tenant of an `Authorization: Bearer <key>` header, or None."""
        if not authorization:
            return None
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        return self._tenants.get(digest(key.strip()))
