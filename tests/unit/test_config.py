"""Configuration: defaults, overrides, inheritance, and every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from turnout.service.core.config import (
    Config,
    ConfigError,
    RouteConfig,
    config_hash,
    config_to_dict,
    parse_config,
)
from turnout.service.runtime.config import load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "turnout.example.toml"


def test_no_file_gives_the_contract_defaults() -> None:
    cfg = parse_config({}, {})
    assert cfg.kafka.topic_prefix == "turnout"
    assert cfg.routes["general"].models[0] == "openai/gpt-4o-mini"
    assert cfg.tenant("anyone").requests_per_minute == 600
    assert cfg.cache.compression == "zstd"
    assert all(getattr(cfg.features, f) for f in ("caching", "budgets", "tracing"))


def test_the_shipped_example_parses_and_only_adds_the_acme_tenant() -> None:
    cfg = load_config(EXAMPLE, env={})
    assert cfg.tenant("acme").requests_per_minute == 100
    assert cfg.tenant("acme").burst == 50  # inherited from [tenants.default]
    assert cfg.routes == Config().routes
    assert cfg.tenants["default"] == Config().tenants["default"]


def test_environment_overrides_every_kind_of_section() -> None:
    cfg = parse_config(
        {"tenants": {"acme": {"requests_per_minute": 100}}},
        {
            "TURNOUT_KAFKA_BOOTSTRAP": "kafka-1:9092,kafka-2:9092",
            "TURNOUT_FEATURES_CACHING": "false",
            "TURNOUT_TENANTS_ACME_BURST": "7",
            "TURNOUT_TENANTS_DEFAULT_BUDGET_USD_PER_DAY": "2.5",
            "TURNOUT_ROUTES_CODE_MODELS": '["a/x", "b/y"]',
            "TURNOUT_ROUTES_CODE_STRATEGY": "cheapest",
            "UNRELATED": "1",
        },
    )
    assert cfg.kafka.bootstrap == "kafka-1:9092,kafka-2:9092"
    assert cfg.features.caching is False
    assert cfg.tenant("acme").burst == 7
    assert cfg.tenant("acme").budget_usd_per_day == 2.5  # default override inherited
    assert cfg.routes["code"] == RouteConfig(strategy="cheapest", models=("a/x", "b/y"))
    assert "general" in cfg.routes


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "kafka": {"bootstrp": "x"},
                "cache": {"ttl_s": "an hour", "compression": "lz4"},
                "routes": {"x": {"strategy": "fastest", "models": []}},
                "tenants": {"acme": {"burst": -1}},
                "breaker": {"failure_threshold": None},
                "nope": {},
            },
            {"TURNOUT_TENANTS_ACME_NO_SUCH_KEY": "1"},
        )
    text = "\n".join(info.value.problems)
    for fragment in (
        "unknown key 'bootstrp' (did you mean 'bootstrap'?)",
        "ttl_s = 'an hour'",
        "strategy 'fastest'",
        "models must name at least one model",
        "unknown section [nope]",
        "TURNOUT_TENANTS_ACME_NO_SUCH_KEY",
    ):
        assert fragment in text, fragment
    assert len(info.value.problems) >= 6


def test_semantic_problems_are_listed_too() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "routes": {"w": {"strategy": "weighted", "models": ["a", "b"], "weights": [1]}},
                "cache": {"compression": "lz4", "scope": "global"},
                "tenants": {"acme": {"burst": -1}},
                "retry": {"base_delay_ms": 5000, "max_delay_ms": 10},
            },
            {},
        )
    problems = info.value.problems
    assert any("weights has 1 entries for 2 models" in p for p in problems)
    assert any("[cache] compression" in p for p in problems)
    assert any("[cache] scope" in p for p in problems)
    assert any("[tenants.acme] burst must not be negative" in p for p in problems)
    assert any("base_delay_ms must not exceed" in p for p in problems)


def test_a_key_that_fails_does_not_hide_the_rest_of_its_section() -> None:
    """A route whose models are not a list still has its strategy checked; a provider
    with no base_url is a listed problem (it was a TypeError out of the parser)."""
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "routes": {"r": {"models": "notalist", "strategy": "bogus"}},
                "providers": {"local": {"models": ["local/*"], "pool_size": 0}},
            },
            {},
        )
    assert info.value.problems == [
        "[routes.r] models = 'notalist': Expected `array`, got `str`",
        "[providers.local] base_url is required",
        "[routes.r] strategy 'bogus' is not one of priority, weighted, lowest_latency, cheapest",
    ]


@pytest.mark.parametrize(
    ("breaker", "problem"),
    [  # each accepted before: the first tripped every breaker on its first success, the
        # second divided by zero in the router's breaker, the third could never trip
        ({"failure_threshold": 0}, "failure_threshold must be at least 1"),
        ({"failure_rate": 0.5, "min_calls": 0, "window_s": 0}, "needs window_s and min_calls"),
        ({"failure_rate": 0.5, "window_s": 0}, "needs window_s and min_calls"),
        ({"call_timeout_s": 0}, "call_timeout_s must be positive"),
    ],
)
def test_breaker_settings_that_cannot_work_are_refused(
    breaker: dict[str, float], problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"breaker": breaker}, {})
    assert [p for p in info.value.problems if problem in p], info.value.problems


def test_money_and_limits_must_be_finite_numbers() -> None:
    """TOML has `inf` and `nan`: as a default price, every budgeted request would fail."""
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"tenants": {"acme": {"default_price_per_mtok": float("inf"),
                                  "budget_usd_per_day": float("nan")}}},
            {},
        )  # fmt: skip
    problems = info.value.problems
    assert "[tenants.acme] default_price_per_mtok must be a finite number, got inf" in problems
    assert "[tenants.acme] budget_usd_per_day must be a finite number, got nan" in problems


def test_bad_toml_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka\nbootstrap = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml", env={})


def test_hash_is_stable_and_changes_with_the_config() -> None:
    a = parse_config({}, {})
    b = parse_config({}, {})
    c = parse_config({"retry": {"max_retries": 1}}, {})
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(c)


def test_the_config_as_data_holds_no_secret() -> None:
    cfg = parse_config({}, {"OPENROUTER_API_KEY": "sk-or-secret"})
    assert "sk-or-secret" not in str(config_to_dict(cfg))
    assert config_to_dict(cfg)["upstream"]["api_key_env"] == "OPENROUTER_API_KEY"
