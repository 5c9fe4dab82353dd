"""Which provider serves a model (`turnout.service.core.providers`) and the `[providers]` config."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnout.service.core.config import DEFAULT_PROVIDER, ConfigError, parse_config
from turnout.service.core.pricing import Price
from turnout.service.core.providers import configured_prices, provider_of, upstream_model

TWO = {
    "providers": {
        "local": {"base_url": "http://127.0.0.1:8000/v1", "models": ["local/*"],
                  "strip_prefix": "local/",
                  "prices": {"local/llama-3.1-8b": {"prompt": "0", "completion": "0"},
                             "openai/gpt-4o": {"prompt": "1", "completion": "1"}}},
        "openai": {"base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY",
                   "models": ["openai/*", "local/special"],
                   "headers": {"OpenAI-Organization": "org-1"}},
    }
}  # fmt: skip


@given(st.text(min_size=1, max_size=40))
def test_without_providers_every_model_goes_to_upstream_by_its_own_name(model: str) -> None:
    cfg = parse_config({}, {})
    assert provider_of(cfg, model) == DEFAULT_PROVIDER
    assert upstream_model(cfg, model) == model
    assert configured_prices(cfg) == {}


def test_the_first_provider_whose_globs_match_serves_the_model() -> None:
    cfg = parse_config(TWO, {})
    assert provider_of(cfg, "local/llama-3.1-8b") == "local"
    assert provider_of(cfg, "local/special") == "local"  # local is listed first
    assert provider_of(cfg, "openai/gpt-4o") == "openai"
    assert provider_of(cfg, "anthropic/claude-3.5-haiku") == DEFAULT_PROVIDER


def test_strip_prefix_sends_the_bare_name_to_its_provider_only() -> None:
    cfg = parse_config(TWO, {})
    assert upstream_model(cfg, "local/llama-3.1-8b") == "llama-3.1-8b"
    assert upstream_model(cfg, "openai/gpt-4o") == "openai/gpt-4o"
    assert upstream_model(cfg, "anthropic/claude-3.5-haiku") == "anthropic/claude-3.5-haiku"


def test_configured_prices_count_only_for_models_their_provider_serves() -> None:
    prices = configured_prices(parse_config(TWO, {}))
    assert prices == {"local/llama-3.1-8b": Price(prompt=0.0, completion=0.0)}


def test_an_environment_variable_overrides_a_providers_key() -> None:
    cfg = parse_config(TWO, {"TURNOUT_PROVIDERS_LOCAL_BASE_URL": "http://10.0.0.5:8000/v1"})
    assert cfg.providers["local"].base_url == "http://10.0.0.5:8000/v1"


def test_a_bad_providers_table_is_refused_with_every_problem_listed() -> None:
    raw = {
        "providers": {
            "upstream": {"base_url": "http://x/v1", "models": ["a/*"]},
            "ftp": {"base_url": "ftp://x", "models": ["b/*"]},
            "empty": {"base_url": "http://x/v1"},
            "leaky": {"base_url": "http://x/v1", "models": ["c/*"], "api_key_env": "sk-or-v1 123"},
            "priced": {"base_url": "http://x/v1", "models": ["d/*"],
                       "prices": {"d/x": {"prompt": "-1", "completion": "free"}}},
            "typo": {"base_url": "http://x/v1", "modles": ["e/*"]},
        }
    }  # fmt: skip
    with pytest.raises(ConfigError) as err:
        parse_config(raw, {})
    text = str(err.value)
    for expected in (
        "[providers.upstream] the name 'upstream' is [upstream]'s",
        "[providers.ftp] base_url must start with http:// or https://",
        "[providers.empty] models must list at least one glob",
        "[providers.leaky] api_key_env must name an environment variable",
        "[providers.priced.prices] 'd/x'",
        "[providers.typo] unknown key 'modles'",
    ):
        assert expected in text, text


# --- a provider that refuses connections ---------------------------------------------

from turnout.service.core import events as ev  # noqa: E402
from turnout.service.core.decision import Call, CallResult, Context, IntakeRequest  # noqa: E402
from turnout.service.core.request import decide_intake, decide_result  # noqa: E402
from turnout.service.core.routing import decide_route  # noqa: E402
from turnout.service.core.state import RouterState, evolve  # noqa: E402

DOWN = {
    "providers": {"down": {"base_url": "http://127.0.0.1:9/v1", "models": ["down/*"]}},
    "routes": {"general": {"models": ["down/a", "down/b", "good/x"]}},
    "retry": {"max_retries": 0},
    "breaker": {"failure_threshold": 2, "recovery_timeout_s": 30},
}


def fail_once(state: RouterState, cfg: object, rid: str, error_class: str, now: int) -> list:
    ctx = Context(now_ms=now, cfg=cfg)  # type: ignore[arg-type]
    req = IntakeRequest(request_id=rid, tenant="acme", messages_hash="h", prompt_tokens_est=5)
    events = []
    decision = decide_intake(state, req, ctx, cache_key=None)
    while True:
        for e in decision.events:
            evolve(state, e, now, ctx.cfg)
        events += decision.events
        calls = [e for e in decision.effects if isinstance(e, Call)]
        if not calls:
            return events
        call = calls[0]
        ok = call.model.startswith("good/")
        result = CallResult(model=call.model, attempt=call.attempt, ok=ok, latency_ms=1.0,
                            status=200 if ok else None,
                            error_class="ok" if ok else error_class)  # fmt: skip
        decision = decide_result(state, rid, result, ctx)


def test_a_refused_connection_that_opens_one_breaker_opens_the_providers_others_too() -> None:
    cfg = parse_config(DOWN, {})
    state = RouterState()
    first = fail_once(state, cfg, "r1", "connect_error", 1_000)
    assert not [e for e in first if isinstance(e, ev.BreakerOpened)]  # one failure: closed
    second = fail_once(state, cfg, "r2", "connect_error", 2_000)
    opened = [e for e in second if isinstance(e, ev.BreakerOpened)]
    assert [o.model for o in opened] == ["down/a", "down/b"]
    assert "provider down unreachable (down/a: 2 consecutive failures)" in opened[1].reason
    tried = [e.model for e in second if isinstance(e, ev.AttemptStarted)]
    assert tried == ["down/a", "good/x"]  # the fallback skipped down/b: never called
    assert state.breakers["down/b"].status == "open"
    assert isinstance(second[-1], ev.RequestCompleted) and second[-1].model == "good/x"


def test_a_5xx_or_a_config_without_providers_opens_breakers_only_on_their_own_failures() -> None:
    for raw, error in ((DOWN, "server_error"), ({**DOWN, "providers": {}}, "connect_error")):
        cfg = parse_config(raw, {})
        state = RouterState()
        fail_once(state, cfg, "r1", error, 1_000)
        events = fail_once(state, cfg, "r2", error, 2_000)
        opened = [e for e in events if isinstance(e, ev.BreakerOpened)]
        assert [o.model for o in opened] == ["down/a", "down/b"]  # each failed twice itself
        assert not any("unreachable" in o.reason for o in opened)
        tried = [e.model for e in events if isinstance(e, ev.AttemptStarted)]
        assert tried == ["down/a", "down/b", "good/x"]


def test_cheapest_compares_models_across_providers_by_the_price_of_the_one_that_serves() -> None:
    raw = {
        "providers": {"local": {"base_url": "http://127.0.0.1:8000/v1", "models": ["local/*"],
                                "prices": {"local/llama": {"prompt": "0", "completion": "0"}}}},
        "routes": {"general": {"strategy": "cheapest",
                               "models": ["openai/gpt-4o", "local/llama", "openai/gpt-4o-mini"]}},
    }  # fmt: skip
    cfg = parse_config(raw, {})
    fetched = {  # OpenRouter's table (it also lists a "local/llama": not the one that serves)
        "openai/gpt-4o": Price(prompt=2.5e-6, completion=1e-5),
        "openai/gpt-4o-mini": Price(prompt=1.5e-7, completion=6e-7),
        "local/llama": Price(prompt=1e-3, completion=1e-3),
    }
    prices = {m: p for m, p in fetched.items() if provider_of(cfg, m) == DEFAULT_PROVIDER}
    prices |= configured_prices(cfg)  # as the router merges them (PriceBook)
    route = decide_route(cfg.routes["general"], request_id="r", pinned=None, now_ms=0,
                         breakers={}, latency={}, prices=prices)  # fmt: skip
    assert route.order == ("local/llama", "openai/gpt-4o-mini", "openai/gpt-4o")
