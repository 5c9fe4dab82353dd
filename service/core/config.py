"""Configuration: a typed, frozen value built from plain data, or every problem at once.

Rules:
- `parse_config(raw, env)` takes the TOML document (already parsed) and the
  environment, and returns a `Config` or raises `ConfigError` listing *every*
  problem found; a bad config is never half-applied.
- Every key may be overridden by `TURNOUT_<SECTION>_<KEY>` (for the tables
  keyed by name: `TURNOUT_TENANTS_<ID>_<KEY>`, `TURNOUT_ROUTES_<TASK>_<KEY>`).
  Values are read as TOML values (`true`, `5`, `["a", "b"]`), else as strings.
- Tenant tables inherit every unset key from `[tenants.default]`.
- The API key itself never appears here: only the name of the variable holding it.
- `[upstream]` is the default provider; `[providers.<name>]` add more (docs/reference/contract.md,
  "Providers"); which provider serves a model is `turnout.service.core.providers`.
- No I/O: reading the file is the shell's job (`turnout.service.runtime.config`).
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
import tomllib
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from turnout.service.core.pricing import parse_price

__all__ = [
    "DEFAULT_PROVIDER",
    "FEATURES",
    "GATEWAY_KEY",
    "IDEMPOTENCE",
    "STRATEGIES",
    "BatchingConfig",
    "BreakerConfig",
    "CacheConfig",
    "Config",
    "ConfigError",
    "DuckdbConfig",
    "Features",
    "GatewayConfig",
    "KafkaConfig",
    "PrivacyConfig",
    "ProviderConfig",
    "ProviderPrice",
    "RetryConfig",
    "RouteConfig",
    "RouterConfig",
    "SnapshotsConfig",
    "StreamingConfig",
    "TenantLimits",
    "TopicsConfig",
    "UpstreamConfig",
    "config_hash",
    "config_to_dict",
    "parse_config",
]

STRATEGIES: Final = ("priority", "weighted", "lowest_latency", "cheapest")
COMPRESSIONS: Final = ("zstd", "gzip", "none")
SCOPES: Final = ("tenant", "shared")
IDEMPOTENCE: Final = ("auto", "on", "off")
GATEWAY_KEY: Final = re.compile(r"sha256:[0-9a-f]{64}")
TENANT: Final = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
DEFAULT_MODELS: Final = (
    "openai/gpt-4o-mini",
    "anthropic/claude-3.5-haiku",
    "meta-llama/llama-3.1-8b-instruct",
)


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` lists every one of them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            f"{len(problems)} configuration problem(s):\n" + "\n".join(f"  - {p}" for p in problems)
        )


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class KafkaConfig(_Section, frozen=True, kw_only=True):
    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "turnout"
    group_id: str = "turnout-router"
    session_timeout_ms: int = 30000  # at most 6 s on Tansu (see service.kafka.consumer)
    heartbeat_interval_ms: int = 1000
    rebalance_timeout_ms: int = 30000
    fetch_max_wait_ms: int = 10
    idle_fetch_max_wait_ms: int = 500  # Apache Kafka, no record for a second: fetch seldom
    linger_ms: int = 0
    events_linger_ms: int = 20
    replication_factor: int = 1
    idempotence: str = "auto"  # auto: on for Apache Kafka, off for Tansu


DAY_MS: Final = 86_400_000


class TopicsConfig(_Section, frozen=True, kw_only=True):
    """Retention per topic (ms; -1 keeps records for ever), set when topics are created.

    Events are kept for ever by default: a router's state needs only its snapshots
    and the events after them, but the archive (and so `turnout replay`) is fed from
    the topic, so a finite retention is the operator's choice once the sink keeps up.
    """

    requests_retention_ms: int = 7 * DAY_MS
    events_retention_ms: int = -1
    responses_retention_ms: int = 1 * DAY_MS
    dlq_retention_ms: int = 14 * DAY_MS


class UpstreamConfig(_Section, frozen=True, kw_only=True):
    base_url: str = "https://openrouter.ai/api/v1"
    api_key_env: str = "OPENROUTER_API_KEY"
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    pool_size: int = 100
    keepalive_s: float = 30.0
    referer: str = "https://github.com/turnout"
    title: str = "Turnout"
    pricing_ttl_s: float = 3600.0


class ProviderPrice(_Section, frozen=True, kw_only=True):
    """USD per token, as decimal strings (or numbers), when a provider publishes none."""

    prompt: str | float
    completion: str | float


class ProviderConfig(_Section, frozen=True, kw_only=True):
    """One more upstream: any OpenAI-compatible API (vLLM, Ollama, OpenAI, Groq...)."""

    base_url: str
    api_key_env: str | None = None  # the variable holding its key; None: no key sent
    headers: dict[str, str] = {}
    models: tuple[str, ...] = ()  # globs: which route models it serves
    strip_prefix: str | None = None  # sent upstream without this prefix
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    pool_size: int = 100
    keepalive_s: float = 30.0
    prices: dict[str, ProviderPrice] = {}


class RouteConfig(_Section, frozen=True, kw_only=True):
    strategy: str = "priority"
    models: tuple[str, ...] = DEFAULT_MODELS
    weights: tuple[float, ...] | None = None
    max_price_per_mtok: float | None = None


class RetryConfig(_Section, frozen=True, kw_only=True):
    max_retries: int = 3
    base_delay_ms: int = 200
    max_delay_ms: int = 10_000
    retry_budget_ratio: float = 0.2
    retry_budget_window_s: int = 60
    retry_budget_min: int = 10


class BreakerConfig(_Section, frozen=True, kw_only=True):
    failure_threshold: int | None = 5
    failure_rate: float | None = None
    window_s: int = 60
    min_calls: int = 10
    recovery_timeout_s: float = 60.0
    success_threshold: int = 3
    call_timeout_s: float = 30.0


class CacheConfig(_Section, frozen=True, kw_only=True):
    ttl_s: int = 3600
    max_bytes: int = 268_435_456
    # what each entry is charged besides its body (its key, ids, usage and index links in
    # memory), so that max_bytes bounds the cache's memory, not only its payload
    entry_overhead_bytes: int = 640
    compression: str = "zstd"
    scope: str = "tenant"
    cache_nondeterministic: bool = False


class RouterConfig(_Section, frozen=True, kw_only=True):
    """The duplicate-answer memory. A finished request's answer is kept `dedupe_window_s`
    (a resent request gets it again), within `dedupe_max_bytes` over all 12 partitions
    (each keeps 1/12; the oldest answer goes first; each answer counts its encoded bytes
    plus `answer_overhead_bytes`). Past that, only its id and outcome are kept, until
    `dedupe_ids_s` and within `dedupe_ids_max_bytes`: a resend is answered `rejected` /
    `duplicate_expired`, never called upstream again. After that it counts as new."""

    dedupe_window_s: int = 86_400
    dedupe_max_bytes: int = 192 * 1024 * 1024
    # what each kept answer is charged besides its encoded bytes (its id, the two index
    # entries and its intake position in memory: ~630 B measured), so that
    # dedupe_max_bytes bounds the memory of the answers, not only their payload
    answer_overhead_bytes: int = 640
    dedupe_ids_s: int = 8 * 86_400
    # the ids kept without their answer, ~96 B each in memory (1/12 per partition; the
    # oldest go first): 256 MiB is ~2.8 M ids, 8 days at 4 requests/s
    dedupe_ids_max_bytes: int = 256 * 1024 * 1024


class SnapshotsConfig(_Section, frozen=True, kw_only=True):
    """How often a router snapshots each events partition it owns (to `turnout.snapshots`):
    after `every_events` events of that partition, or `every_s` after the last snapshot if
    any event came since, whichever is first."""

    every_events: int = 10_000
    every_s: float = 300.0


class StreamingConfig(_Section, frozen=True, kw_only=True):
    """How streamed answers are relayed (`"stream": true`). Upstream deltas are coalesced
    into one chunk record until `flush_tokens` (estimated) have gathered or `flush_ms` has
    passed since the last record; the first token is always sent at once (no linger), the
    later records of every stream in flight are batched `linger_ms` (fewer produce requests).
    No first token within `ttft_timeout_s` is a failed attempt (retried or fallen back)."""

    flush_ms: int = 25
    flush_tokens: int = 32
    ttft_timeout_s: float = 20.0
    linger_ms: int = 5  # chunk records after the first: batched across streams this long


class GatewayConfig(_Section, frozen=True, kw_only=True):
    """`turnout gateway`, the OpenAI-compatible HTTP front door. `keys` maps
    `"sha256:<hex of an API key>"` to a tenant; with none the gateway runs open."""

    host: str = "127.0.0.1"
    port: int = 8000
    timeout_s: float = 120.0
    max_body_bytes: int = 1_000_000
    keys: dict[str, str] = {}


class BatchingConfig(_Section, frozen=True, kw_only=True):
    max_records: int = 500
    max_wait_ms: int = 5
    max_in_flight: int = 256


class TenantLimits(_Section, frozen=True, kw_only=True):
    requests_per_minute: int | None = 600
    requests_per_hour: int | None = 20_000
    requests_per_day: int | None = 200_000
    burst: int | None = 50
    tokens_per_minute: int | None = 2_000_000
    budget_usd_per_day: float | None = 50.0
    budget_usd_per_month: float | None = 1000.0
    budget_usd_lifetime: float | None = None
    budget_soft_percent: float = 80.0
    default_price_per_mtok: float = 10.0
    default_max_tokens: int = 1024


class Features(_Section, frozen=True, kw_only=True):
    caching: bool = True
    cache_compression: bool = True
    request_coalescing: bool = True
    batching: bool = True
    circuit_breaker: bool = True
    retries: bool = True
    fallbacks: bool = True
    rate_limiting: bool = True
    budgets: bool = True
    metrics: bool = True
    health_checks: bool = True
    tracing: bool = True
    snapshots: bool = True


FEATURES: Final = tuple(f.name for f in msgspec.structs.fields(Features))


class PrivacyConfig(_Section, frozen=True, kw_only=True):
    store_prompts: bool = False


class DuckdbConfig(_Section, frozen=True, kw_only=True):
    path: str = "./data/turnout.duckdb"
    # events newer than this, behind the newest stored (or now), stay in the main file;
    # whole UTC days older are sealed into read-only parts (analytics/archive.py: seal);
    # 0: never seal
    hot_hours: float = 24.0
    # sealed parts whose days all ended more than this many days before the last sealed
    # one are dropped (retention); 0: keep every day
    keep_days: int = 0


class Config(msgspec.Struct, frozen=True, kw_only=True):
    kafka: KafkaConfig = KafkaConfig()
    topics: TopicsConfig = TopicsConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    routes: dict[str, RouteConfig] = msgspec.field(
        default_factory=lambda: {"general": RouteConfig()}
    )
    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    cache: CacheConfig = CacheConfig()
    batching: BatchingConfig = BatchingConfig()
    streaming: StreamingConfig = StreamingConfig()
    gateway: GatewayConfig = GatewayConfig()
    snapshots: SnapshotsConfig = SnapshotsConfig()
    router: RouterConfig = RouterConfig()
    tenants: dict[str, TenantLimits] = msgspec.field(
        default_factory=lambda: {"default": TenantLimits()}
    )
    providers: dict[str, ProviderConfig] = {}  # in the file's order: the first match serves
    features: Features = Features()
    privacy: PrivacyConfig = PrivacyConfig()
    duckdb: DuckdbConfig = DuckdbConfig()

    def tenant(self, tenant_id: str) -> TenantLimits:
        """The limits in force for `tenant_id` (its own table, else the default)."""
        return self.tenants.get(tenant_id) or self.tenants["default"]


_FLAT_SECTIONS: Final[dict[str, type[_Section]]] = {
    "kafka": KafkaConfig,
    "topics": TopicsConfig,
    "upstream": UpstreamConfig,
    "retry": RetryConfig,
    "breaker": BreakerConfig,
    "cache": CacheConfig,
    "batching": BatchingConfig,
    "streaming": StreamingConfig,
    "gateway": GatewayConfig,
    "snapshots": SnapshotsConfig,
    "router": RouterConfig,
    "features": Features,
    "privacy": PrivacyConfig,
    "duckdb": DuckdbConfig,
}
_NAMED_SECTIONS: Final[dict[str, type[_Section]]] = {
    "routes": RouteConfig,
    "tenants": TenantLimits,
    "providers": ProviderConfig,
}
_SECRET_HEADERS: Final = frozenset({"authorization", "api-key", "x-api-key", "proxy-authorization"})
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DEFAULT_PROVIDER: Final = "upstream"  # the name `[upstream]` goes by in events and /healthz


def _field_names(cls: type[_Section]) -> list[str]:
    return [f.name for f in msgspec.structs.fields(cls)]


def _hint(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------- environment


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _split_named_key(rest: str, keys: list[str]) -> tuple[str, str] | None:
    """`ACME_REQUESTS_PER_MINUTE` -> ("acme", "requests_per_minute")."""
    lowered = rest.lower()
    for key in sorted(keys, key=len, reverse=True):
        suffix = "_" + key
        if lowered.endswith(suffix) and len(lowered) > len(suffix):
            return lowered[: -len(suffix)], key
    return None


def _apply_env(raw: dict[str, Any], env: Mapping[str, str], problems: list[str]) -> None:
    for name, text in env.items():
        if not name.startswith("TURNOUT_"):
            continue
        section, _, rest = name[len("TURNOUT_") :].partition("_")
        section = section.lower()
        if section in _FLAT_SECTIONS:
            keys = _field_names(_FLAT_SECTIONS[section])
            key = rest.lower()
            if key in keys:
                raw.setdefault(section, {})[key] = _env_value(text)
        elif section in _NAMED_SECTIONS:
            split = _split_named_key(rest, _field_names(_NAMED_SECTIONS[section]))
            if split is None:
                problems.append(f"{name}: no such key in [{section}.<name>]")
                continue
            table, key = split
            raw.setdefault(section, {}).setdefault(table, {})[key] = _env_value(text)


# ---------------------------------------------------------------- sections


def _convert_section(
    cls: type[_Section], where: str, table: Any, base: _Section | None, problems: list[str]
) -> _Section | None:
    if not isinstance(table, dict):
        problems.append(f"[{where}] must be a table, got {type(table).__name__}")
        return None
    fields = {f.name: f for f in msgspec.structs.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        field = fields.get(key)
        if field is None:
            problems.append(f"[{where}] unknown key {key!r}{_hint(key, list(fields))}")
            continue
        try:
            values[key] = msgspec.convert(value, field.type, strict=False)
        except msgspec.ValidationError as err:
            problems.append(f"[{where}] {key} = {value!r}: {err}")
    if base is not None:
        return msgspec.structs.replace(base, **values)
    missing = [f.name for f in fields.values() if f.required and f.name not in table]
    for name in missing:
        problems.append(f"[{where}] {name} is required")
    if any(f.required and f.name not in values for f in fields.values()):
        return None
    # a key that failed keeps its default, so the rest of the section is still checked
    # (every problem listed); the config is refused all the same
    return cls(**values)


def _check_positive(where: str, values: dict[str, Any], problems: list[str]) -> None:
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):  # TOML's inf and nan
            problems.append(f"[{where}] {key} must be a finite number, got {value}")
        elif isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            problems.append(f"[{where}] {key} must not be negative, got {value}")


def _check_route(name: str, route: RouteConfig, problems: list[str]) -> None:
    where = f"routes.{name}"
    if route.strategy not in STRATEGIES:
        problems.append(
            f"[{where}] strategy {route.strategy!r} is not one of {', '.join(STRATEGIES)}"
        )
    if not route.models:
        problems.append(f"[{where}] models must name at least one model")
    if len(set(route.models)) != len(route.models):
        problems.append(f"[{where}] models lists a model twice")
    if route.strategy == "weighted":
        if route.weights is None:
            problems.append(f"[{where}] strategy 'weighted' needs weights")
        elif len(route.weights) != len(route.models):
            problems.append(
                f"[{where}] weights has {len(route.weights)} entries for {len(route.models)} models"
            )
        elif any(w < 0 for w in route.weights) or sum(route.weights) <= 0:
            problems.append(f"[{where}] weights must be non-negative with a positive sum")


def _check_semantics(cfg: Config, problems: list[str]) -> None:
    for section in (
        "kafka",
        "upstream",
        "retry",
        "breaker",
        "cache",
        "batching",
        "streaming",
        "gateway",
        "snapshots",
        "router",
    ):
        _check_positive(section, msgspec.structs.asdict(getattr(cfg, section)), problems)
    for tenant_id, limits in cfg.tenants.items():
        _check_positive(f"tenants.{tenant_id}", msgspec.structs.asdict(limits), problems)
        if not 0 <= limits.budget_soft_percent <= 100:
            problems.append(f"[tenants.{tenant_id}] budget_soft_percent must be within 0..100")
    for name, route in cfg.routes.items():
        _check_route(name, route, problems)
    if cfg.kafka.idempotence not in IDEMPOTENCE:
        problems.append(f"[kafka] idempotence must be one of {', '.join(IDEMPOTENCE)}")
    for key, value in msgspec.structs.asdict(cfg.topics).items():
        if value == 0 or value < -1:
            problems.append(f"[topics] {key} must be positive, or -1 to keep records for ever")
    if cfg.cache.compression not in COMPRESSIONS:
        problems.append(f"[cache] compression must be one of {', '.join(COMPRESSIONS)}")
    if cfg.cache.scope not in SCOPES:
        problems.append(f"[cache] scope must be one of {', '.join(SCOPES)}")
    breaker = cfg.breaker
    if breaker.failure_threshold is None and breaker.failure_rate is None:
        problems.append("[breaker] set failure_threshold or failure_rate")
    if breaker.failure_rate is not None and not 0 < breaker.failure_rate <= 1:
        problems.append("[breaker] failure_rate must be within (0, 1]")
    if breaker.success_threshold < 1:
        problems.append("[breaker] success_threshold must be at least 1")
    if breaker.failure_threshold is not None and breaker.failure_threshold < 1:
        problems.append("[breaker] failure_threshold must be at least 1 (or unset)")
    if breaker.failure_rate is not None and (breaker.window_s < 1 or breaker.min_calls < 1):
        problems.append("[breaker] failure_rate needs window_s and min_calls of at least 1")
    if breaker.call_timeout_s <= 0:
        problems.append("[breaker] call_timeout_s must be positive")
    if not 0 <= cfg.retry.retry_budget_ratio <= 1:
        problems.append("[retry] retry_budget_ratio must be within 0..1")
    if cfg.retry.base_delay_ms > cfg.retry.max_delay_ms:
        problems.append("[retry] base_delay_ms must not exceed max_delay_ms")
    if cfg.batching.max_records < 1 or cfg.batching.max_in_flight < 1:
        problems.append("[batching] max_records and max_in_flight must be at least 1")
    if cfg.router.dedupe_ids_s < cfg.router.dedupe_window_s:
        problems.append("[router] dedupe_ids_s must be at least dedupe_window_s")
    hot = cfg.duckdb.hot_hours
    if not (hot == 0 or 1 <= hot <= 24 * 366):  # also refuses nan
        problems.append("[duckdb] hot_hours must be 0 (never seal) or 1 to 8784 hours")
    if not 0 <= cfg.duckdb.keep_days <= 36_500:
        problems.append("[duckdb] keep_days must be 0 (keep every day) or 1 to 36500")
    if cfg.duckdb.keep_days and not cfg.duckdb.hot_hours:
        problems.append("[duckdb] keep_days needs sealing: set hot_hours too")
    if cfg.snapshots.every_events < 1 or cfg.snapshots.every_s <= 0:
        problems.append("[snapshots] every_events must be at least 1 and every_s positive")
    if cfg.streaming.flush_tokens < 1 or cfg.streaming.ttft_timeout_s <= 0:
        problems.append("[streaming] flush_tokens must be at least 1 and ttft_timeout_s positive")
    if not 0 <= cfg.gateway.port < 65536:
        problems.append(
            f"[gateway] port must be within 0..65535 (0: any free one), got {cfg.gateway.port}"
        )
    for digest, tenant in cfg.gateway.keys.items():
        if not GATEWAY_KEY.fullmatch(digest):
            problems.append(
                f'[gateway.keys] {digest[:16]!r}... is not "sha256:<64 hex digits>" '
                "(`turnout gateway key create` prints the line to add)"
            )
        if not TENANT.fullmatch(tenant):
            problems.append(f"[gateway.keys] tenant {tenant!r} is not a valid tenant id")
    if not cfg.upstream.base_url.startswith(("http://", "https://")):
        problems.append("[upstream] base_url must start with http:// or https://")
    for name, provider in cfg.providers.items():
        _check_provider(name, provider, problems)


def _check_provider(name: str, p: ProviderConfig, problems: list[str]) -> None:
    where = f"providers.{name}"
    if name == DEFAULT_PROVIDER:
        problems.append(f"[{where}] the name {name!r} is [upstream]'s: pick another")
    if not p.base_url.startswith(("http://", "https://")):
        problems.append(f"[{where}] base_url must start with http:// or https://")
    if not p.models:
        problems.append(f'[{where}] models must list at least one glob (e.g. ["local/*"])')
    if p.api_key_env is not None and not _ENV_NAME.fullmatch(p.api_key_env):
        problems.append(f"[{where}] api_key_env must name an environment variable, "
                        f"not hold a key")  # fmt: skip
    secret = [h for h in p.headers if h.lower() in _SECRET_HEADERS]
    if secret:
        problems.append(f"[{where}] headers must not carry a key ({', '.join(secret)}): "
                        "name its variable in api_key_env instead")  # fmt: skip
    if p.pool_size < 1 or p.timeout_s <= 0 or p.connect_timeout_s <= 0:
        problems.append(f"[{where}] pool_size must be at least 1 and the timeouts positive")
    for model, price in p.prices.items():
        if parse_price(str(price.prompt), str(price.completion)) is None:
            problems.append(f"[{where}.prices] {model!r}: prompt and completion must be "
                            "non-negative USD per token")  # fmt: skip


def _parse_named(name: str, raw: Any, problems: list[str]) -> dict[str, Any]:
    cls = _NAMED_SECTIONS[name]
    if not isinstance(raw, dict):
        problems.append(f"[{name}] must be a table of tables")
        return {}
    out: dict[str, Any] = {}
    base: _Section | None = None
    if name == "tenants":
        default = _convert_section(cls, "tenants.default", raw.get("default", {}), None, problems)
        base = default or TenantLimits()
        out["default"] = base
    for key, table in raw.items():
        if name == "tenants" and key == "default":
            continue
        value = _convert_section(cls, f"{name}.{key}", table, base, problems)
        if value is not None:
            out[key] = value
    return out


def parse_config(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Build the config from a parsed TOML document plus `TURNOUT_*` overrides."""
    problems: list[str] = []
    doc: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for section in _NAMED_SECTIONS:
        if isinstance(doc.get(section), dict):
            doc[section] = {
                k: (dict(v) if isinstance(v, dict) else v) for k, v in doc[section].items()
            }
    _apply_env(doc, env or {}, problems)
    values: dict[str, Any] = {}
    known = [*_FLAT_SECTIONS, *_NAMED_SECTIONS]
    for section, table in doc.items():
        if section in _FLAT_SECTIONS:
            value = _convert_section(_FLAT_SECTIONS[section], section, table, None, problems)
            if value is not None:
                values[section] = value
        elif section in _NAMED_SECTIONS:
            values[section] = _parse_named(section, table, problems)
        else:
            problems.append(f"unknown section [{section}]{_hint(section, known)}")
    routes = values.get("routes")
    if routes is not None and "general" not in routes:
        routes["general"] = RouteConfig()
    cfg = Config(**values)
    _check_semantics(cfg, problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain data for events and /healthz; holds no secret (only the key's variable name)."""
    result: dict[str, Any] = msgspec.to_builtins(cfg)
    return result


def config_hash(cfg: Config) -> str:
    """A stable hash of the configuration in force (sha256 of its canonical JSON)."""
    return hashlib.sha256(msgspec.json.encode(config_to_dict(cfg), order="sorted")).hexdigest()
