"""The simulator's pure parts: scenario parsing and decisions, prices, answers, wire."""

from __future__ import annotations

import math
import random
import re
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.service.errors import TurnoutError
from turnout.service.upstream.simulator.answer import (
    estimate_tokens,
    make_answer,
    prompt_text_length,
    split_for_stream,
)
from turnout.service.upstream.simulator.catalogue import Catalogue, derived_price, provider_for
from turnout.service.upstream.simulator.scenario import (
    MIDSTREAM_ERROR,
    OK,
    TIMEOUT,
    Latency,
    Price,
    Rule,
    Scenario,
    ScenarioError,
    decide,
    parse_scenario,
    with_overrides,
)
from turnout.service.upstream.simulator.state import SimulatorOptions, SimulatorState
from turnout.service.upstream.simulator.wire import (
    ChatRequest,
    Message,
    decode_request,
    request_key,
)

CONTRACT_EXAMPLE = """
seed = 7
latency_ms = 50
[[rule]]
model = "anthropic/*"
from_s = 0
to_s = 10
outcome = 503
rate = 1.0
retry_after_s = 3
[prices."openai/gpt-4o-mini"]
prompt = "0.000001"
completion = "0.000002"
"""

# ----------------------------------------------------------------------------- parsing


def test_the_contract_example_parses() -> None:
    scenario = parse_scenario(CONTRACT_EXAMPLE)
    assert scenario.seed == 7
    assert scenario.latency == Latency(median_ms=50, p99_ms=50)
    assert scenario.rules == (
        Rule(model="anthropic/*", from_s=0, to_s=10, outcome=503, rate=1.0, retry_after_s=3),
    )
    assert scenario.prices == {
        "openai/gpt-4o-mini": Price(prompt="0.000001", completion="0.000002")
    }


def test_defaults_and_lognormal_latency() -> None:
    scenario = parse_scenario(
        'latency_ms = {median = 50, p99 = 400}\n[[rule]]\noutcome = "timeout"\n'
        "[[rule]]\nmodel = 'slow/*'\nlatency_ms = 900\n"
    )
    assert scenario.seed is None
    assert scenario.latency == Latency(median_ms=50, p99_ms=400)
    first, second = scenario.rules
    assert (first.model, first.from_s, first.to_s, first.rate) == ("*", 0, math.inf, 1.0)
    assert first.outcome == TIMEOUT and first.retry_after_s is None
    assert second.outcome == OK and second.latency == Latency(median_ms=900, p99_ms=900)


def test_an_empty_file_is_the_normal_simulator() -> None:
    assert parse_scenario("") == Scenario()


BAD = """
seed = "seven"
latency_ms = {median = 50, p99 = 10, mean = 3}
colour = "blue"
[[rule]]
model = ""
from_s = 5
to_s = 2
outcome = 200
rate = 1.5
retry_after_s = -1
typo = true
[[rule]]
model = "a/*"
[prices."x/y"]
prompt = "cheap"
[prices."z/w"]
prompt = -1
completion = "0.1"
"""

BAD_PROBLEMS = [
    "seed: must be an integer",
    "latency_ms.mean: unknown key",
    "latency_ms.p99: must be >= median",
    "colour: unknown key",
    "rule[0].model: must be a non-empty glob string",
    "rule[0].to_s: must be > from_s",
    "rule[0].outcome: must be an HTTP status 400..599",
    "rule[0].rate: must be a number between 0 and 1",
    "rule[0].retry_after_s: must be a number >= 0",
    "rule[0].typo: unknown key",
    "rule[1]: sets neither outcome nor latency_ms",
    'prices."x/y".prompt: must be a decimal string',
    'prices."x/y".completion: must be a decimal string',
    'prices."z/w".prompt: must be a decimal string',
]


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(BAD, source="bad.toml")
    problems = caught.value.problems
    for expected in BAD_PROBLEMS:
        assert any(p.startswith(expected) for p in problems), (expected, problems)
    assert len(problems) == len(BAD_PROBLEMS)
    message = str(caught.value)
    assert message.startswith(f"bad.toml: {len(BAD_PROBLEMS)} problems: ")
    assert "\n" not in message and isinstance(caught.value, TurnoutError)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("seed = ", "not valid TOML"),
        ("rule = 3", "rule: must be an array of tables"),
        ("prices = 3", "prices: must be a table"),
        ("latency_ms = -5", "latency_ms: must be a number of ms >= 0"),
        ("latency_ms = true", "latency_ms: must be a number"),
        ("[[rule]]\noutcome = 'explode'", "rule[0].outcome: must be an HTTP status"),
        ("[[rule]]\noutcome = 399", "rule[0].outcome: must be an HTTP status"),
        ("[[rule]]\noutcome = 503\nfrom_s = -1", "rule[0].from_s: must be a number >= 0"),
        ('[prices."a/b"]\nprompt = "1"', 'prices."a/b".completion: must be a decimal'),
    ],
)
def test_single_problems(text: str, problem: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text)
    assert caught.value.problems[0].startswith(problem), caught.value.problems


def test_prices_accept_numbers_and_normalise() -> None:
    scenario = parse_scenario('[prices."a/b"]\nprompt = 0.0000010\ncompletion = "2E-6"')
    assert scenario.prices["a/b"] == Price(prompt="0.000001", completion="0.000002")


# ----------------------------------------------------------------------------- overrides


def test_shorthands_override_seed_and_latency_and_append_an_error_rule() -> None:
    base = parse_scenario(CONTRACT_EXAMPLE)
    scenario = with_overrides(base, seed=1, latency_ms=5, error_rate=0.25)
    assert scenario.seed == 1
    assert scenario.latency == Latency(median_ms=5, p99_ms=5)
    assert scenario.rules[:-1] == base.rules
    assert scenario.rules[-1] == Rule(model="*", outcome=503, rate=0.25, retry_after_s=1.0)
    assert with_overrides(base) == base


def test_bad_shorthands_are_all_listed() -> None:
    with pytest.raises(ScenarioError) as caught:
        with_overrides(Scenario(), latency_ms=-1, error_rate=2)
    assert [p.split(":")[0] for p in caught.value.problems] == ["--latency-ms", "--error-rate"]


# ----------------------------------------------------------------------------- decisions

PHASES = Scenario(
    latency=Latency(median_ms=10, p99_ms=10),
    rules=(
        Rule(model="anthropic/*", from_s=0, to_s=10, outcome=503, retry_after_s=3),
        Rule(model="anthropic/*", from_s=10, to_s=20, outcome=MIDSTREAM_ERROR, rate=0.5),
        Rule(model="slow/*", latency=Latency(median_ms=900, p99_ms=900)),
        Rule(model="*", outcome=429, rate=0.1),
    ),
)


@pytest.mark.parametrize(
    ("model", "t_s", "u_rate", "outcome", "latency_ms", "rule"),
    [
        ("anthropic/claude-3.5-haiku", 0.0, 0.99, 503, 10, 0),
        ("anthropic/claude-3.5-haiku", 9.99, 0.5, 503, 10, 0),
        ("anthropic/claude-3.5-haiku", 10.0, 0.49, MIDSTREAM_ERROR, 10, 1),
        ("anthropic/claude-3.5-haiku", 10.0, 0.5, OK, 10, 1),  # matched, not affected
        ("anthropic/claude-3.5-haiku", 20.0, 0.05, 429, 10, 3),  # window over: falls to "*"
        ("slow/model", 0.0, 0.0, OK, 900, 2),  # first match wins: never reaches "*"
        ("openai/gpt-4o-mini", 0.0, 0.09, 429, 10, 3),
        ("openai/gpt-4o-mini", 0.0, 0.1, OK, 10, 3),
    ],
)
def test_decide(
    model: str, t_s: float, u_rate: float, outcome: object, latency_ms: float, rule: int
) -> None:
    decision = decide(PHASES, model, t_s, u_rate, 0.5)
    assert (decision.outcome, decision.latency_ms, decision.rule) == (outcome, latency_ms, rule)
    if outcome == 503:
        assert decision.retry_after_s == 3


def test_no_rule_means_a_normal_answer() -> None:
    decision = decide(Scenario(), "any/model", 123.0, 0.0, 0.0)
    assert (decision.outcome, decision.latency_ms, decision.rule) == (OK, 0.0, None)


def test_lognormal_latency_hits_its_median_and_p99() -> None:
    latency = Latency(median_ms=50, p99_ms=400)
    assert latency.sample_ms(0.5) == pytest.approx(50)
    assert latency.sample_ms(0.99) == pytest.approx(400)
    assert latency.sample_ms(0.0) > 0
    assert latency.sample_ms(0.999999999) < 50 * 100


@settings(max_examples=40, deadline=None)
@given(rate=st.floats(0, 1), seed=st.integers(0, 2**32))
def test_rate_r_affects_about_r_of_the_matching_requests(rate: float, seed: int) -> None:
    scenario = Scenario(rules=(Rule(model="*", outcome=503, rate=rate),))
    rng = random.Random(seed)
    n = 4000
    hits = sum(
        decide(scenario, "m/x", 0, rng.random(), rng.random()).outcome == 503 for _ in range(n)
    )
    assert abs(hits / n - rate) < 0.04  # > 5 standard deviations at n = 4000


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    models=st.lists(st.sampled_from(["a/x", "b/y", "c/z"]), min_size=1, max_size=40),
)
def test_same_seed_same_requests_same_outcomes(seed: int, models: list[str]) -> None:
    scenario = Scenario(
        seed=seed,
        latency=Latency(median_ms=20, p99_ms=300),
        rules=(Rule(model="a/*", outcome=429, rate=0.3), Rule(model="*", outcome=503, rate=0.2)),
    )

    def run() -> list[tuple[object, float]]:
        state = SimulatorState(SimulatorOptions(scenario=scenario))
        return [(d.outcome, d.latency_ms) for d in map(state.decide, models)]

    assert run() == run()


# ----------------------------------------------------------------------------- catalogue

DECIMAL = re.compile(r"^\d+(\.\d+)?$")


def test_builtin_prices_and_scenario_overrides() -> None:
    catalogue = Catalogue({"openai/gpt-4o-mini": Price(prompt="0.000001", completion="0.000002")})
    mini = catalogue.info("openai/gpt-4o-mini")
    assert (mini.prompt, mini.completion, mini.provider) == ("0.000001", "0.000002", "OpenAI")
    haiku = catalogue.info("anthropic/claude-3.5-haiku")
    assert (haiku.prompt, haiku.completion) == ("0.0000008", "0.000004")
    assert haiku.cost_usd(1000, 100) == pytest.approx(1000 * 0.0000008 + 100 * 0.000004)
    ids = [info.id for info in catalogue.listing()]
    assert ids[:3] == [
        "openai/gpt-4o-mini",
        "anthropic/claude-3.5-haiku",
        "meta-llama/llama-3.1-8b-instruct",
    ]


@given(st.text(min_size=1, max_size=60))
def test_derived_prices_are_stable_realistic_decimal_strings(model: str) -> None:
    price = derived_price(model)
    assert price == derived_price(model)
    assert DECIMAL.match(price.prompt) and DECIMAL.match(price.completion)
    per_million = Decimal(price.prompt) * 1_000_000
    assert Decimal("0.02") <= per_million <= Decimal("5")
    assert Decimal(price.prompt) < Decimal(price.completion) <= 5 * Decimal(price.prompt)


def test_a_derived_price_does_not_change_between_releases() -> None:
    assert derived_price("acme/unknown-model") == Price(
        prompt="0.00000093", completion="0.00000465"
    )
    info = Catalogue().info("acme/unknown-model")
    assert (info.name, info.context_length) == ("Acme: unknown-model", 32_768)
    assert provider_for("meta-llama/llama-3.1-8b-instruct") == "DeepInfra"
    assert provider_for("no-slash") == "Simulator"


def test_seen_models_join_the_listing_and_bump_the_version() -> None:
    catalogue = Catalogue(known=["named/in-a-rule"])
    catalogue.listing()
    version = catalogue.version
    catalogue.info("new/model")
    assert catalogue.version > version
    ids = [info.id for info in catalogue.listing()]
    assert ids[-2:] == ["named/in-a-rule", "new/model"]


# ----------------------------------------------------------------------------- answers


@given(key=st.binary(max_size=64), max_tokens=st.one_of(st.none(), st.integers(1, 80)))
def test_answers_are_deterministic_and_bounded_by_max_tokens(
    key: bytes, max_tokens: int | None
) -> None:
    answer = make_answer(key, max_tokens)
    assert answer == make_answer(key, max_tokens)
    assert answer.completion_tokens == estimate_tokens(len(answer.text))
    if max_tokens is not None:
        assert answer.completion_tokens <= max_tokens
    if answer.finish_reason == "length":
        assert max_tokens is not None and answer != make_answer(key, None)
    else:
        assert answer.finish_reason == "stop" and answer.text.endswith(".")
    assert "".join(split_for_stream(answer.text)) == answer.text


def test_token_estimate_is_chars_over_four_rounded_up() -> None:
    assert [estimate_tokens(n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    parts = [{"type": "text", "text": "abcd"}, {"type": "image_url", "image_url": {}}]
    assert prompt_text_length(["hello", None, parts]) == 9


# ----------------------------------------------------------------------------- wire


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"model": "a/b"}', "messages: required"),
        (b'{"model": "a/b", "messages": []}', "messages: required"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model: required"),
        (b'{"model": "a/b", "messages": [{"role": 1}]}', "$.messages[0].role"),
        (b'{"model": "a/b", "messages": [{"role": "user"}], "max_tokens": 0}', "max_tokens"),
        (b'{"model": "a/b", "messages": [{"role": "user"}], "temperature": 3}', "temperature"),
    ],
)
def test_bad_requests_say_why(body: bytes, problem: str) -> None:
    result = decode_request(body)
    assert isinstance(result, str) and problem in result


def test_the_request_key_ignores_stream_and_unknown_fields() -> None:
    body = b'{"model": "a/b", "messages": [{"role": "user", "content": "hi"}], "user": "u1"}'
    request = decode_request(body)
    assert isinstance(request, ChatRequest)
    streamed = ChatRequest(model="a/b", messages=[Message("user", "hi")], stream=True)
    assert request_key(request) == request_key(streamed)
    hotter = ChatRequest(model="a/b", messages=[Message("user", "hi")], temperature=1.0)
    assert request_key(request) != request_key(hotter)
