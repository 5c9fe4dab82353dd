"""The simulator's model catalogue: names, providers, prices, context lengths.

Job: answer "what does model X cost and who serves it" for any model name.

Rules:
- Every model name is served. A built-in catalogue holds the default route's
  three models and a few more at realistic OpenRouter prices; any other name
  gets a price derived from a hash of the name (stable across runs and
  machines): prompt between $0.02 and $5 per million tokens, completion 1.5 to
  5 times that, two significant digits.
- A scenario's `[prices."model/name"]` overrides both.
- Prices are USD per token as decimal strings (OpenRouter's `/models` shape);
  cost is computed in float and rounded to 12 decimal places.
- Pure: no I/O; `Catalogue` only memoises.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from decimal import Decimal

import msgspec

from .scenario import Price

__all__ = ["BUILTIN_MODELS", "Catalogue", "ModelInfo", "derived_price", "provider_for"]


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    provider: str
    prompt: str  # USD per prompt token, decimal string
    completion: str  # USD per completion token, decimal string
    context_length: int
    prompt_usd: float
    completion_usd: float

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        cost = prompt_tokens * self.prompt_usd + completion_tokens * self.completion_usd
        return round(cost, 12)


# id: (name, prompt USD/token, completion USD/token, context length)
BUILTIN_MODELS: dict[str, tuple[str, str, str, int]] = {
    "openai/gpt-4o-mini": ("OpenAI: GPT-4o-mini", "0.00000015", "0.0000006", 128_000),
    "anthropic/claude-3.5-haiku": ("Anthropic: Claude 3.5 Haiku", "0.0000008", "0.000004", 200_000),
    "meta-llama/llama-3.1-8b-instruct": (
        "Meta: Llama 3.1 8B Instruct",
        "0.00000002",
        "0.00000003",
        131_072,
    ),
    "openai/gpt-4o": ("OpenAI: GPT-4o", "0.0000025", "0.00001", 128_000),
    "anthropic/claude-3.5-sonnet": (
        "Anthropic: Claude 3.5 Sonnet",
        "0.000003",
        "0.000015",
        200_000,
    ),
    "google/gemini-2.0-flash-001": (
        "Google: Gemini 2.0 Flash",
        "0.0000001",
        "0.0000004",
        1_048_576,
    ),
    "mistralai/mistral-7b-instruct": (
        "Mistral: Mistral 7B Instruct",
        "0.000000028",
        "0.000000054",
        32_768,
    ),
    "deepseek/deepseek-chat": ("DeepSeek: DeepSeek V3", "0.00000038", "0.00000089", 163_840),
}

_PROVIDERS = {
    "openai": "OpenAI",
    "anthropic": "Anthropic",
    "google": "Google",
    "meta-llama": "DeepInfra",
    "mistralai": "Mistral",
    "deepseek": "DeepSeek",
}
_CONTEXT_LENGTHS = (8_192, 32_768, 65_536, 131_072, 200_000)
_COMPLETION_FACTORS = ("1.5", "2", "3", "4", "5")
_MEMO_LIMIT = 10_000


def provider_for(model: str) -> str:
    """The provider name reported for `model` (`openai/x` -> `OpenAI`)."""
    vendor, slash, _ = model.partition("/")
    if not slash:
        return "Simulator"
    return _PROVIDERS.get(vendor, vendor.replace("-", " ").title() or "Simulator")


def derived_price(model: str) -> Price:
    """A stable, realistic price for any model name, from a hash of the name."""
    digest = hashlib.blake2b(model.encode(), digest_size=8).digest()
    fraction = int.from_bytes(digest[:4], "big") / 2**32
    per_million = Decimal(0.02 * 250**fraction)  # log-uniform in [0.02, 5) USD
    per_million = Decimal(f"{per_million:.2g}")
    prompt = per_million / Decimal(1_000_000)
    completion = prompt * Decimal(_COMPLETION_FACTORS[digest[4] % len(_COMPLETION_FACTORS)])
    return Price(prompt=_decimal_str(prompt), completion=_decimal_str(completion))


def _decimal_str(amount: Decimal) -> str:
    return format(amount.normalize(), "f")


def _model_info(model: str, prices: Mapping[str, Price]) -> ModelInfo:
    builtin = BUILTIN_MODELS.get(model)
    if builtin is not None:
        name, prompt, completion, context = builtin
        price = Price(prompt=prompt, completion=completion)
    else:
        vendor, _, rest = model.rpartition("/")
        name = f"{provider_for(model)}: {rest}" if vendor else model
        price = derived_price(model)
        context = _CONTEXT_LENGTHS[hashlib.blake2b(model.encode()).digest()[0] % 5]
    price = prices.get(model, price)
    return ModelInfo(
        id=model,
        name=name,
        provider=provider_for(model),
        prompt=price.prompt,
        completion=price.completion,
        context_length=context,
        prompt_usd=float(price.prompt),
        completion_usd=float(price.completion),
    )


class Catalogue:
    """Model information for any name; remembers the names it was asked about.

    `version` changes whenever a new name is remembered, so a listing built
    from `listing()` can be cached until then.
    """

    def __init__(
        self, prices: Mapping[str, Price] | None = None, known: Iterable[str] = ()
    ) -> None:
        self._prices = dict(prices or {})
        self._known = tuple(known)
        self._memo: dict[str, ModelInfo] = {}
        self.version = 0

    def info(self, model: str) -> ModelInfo:
        info = self._memo.get(model)
        if info is None:
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            info = self._memo[model] = _model_info(model, self._prices)
            self.version += 1
        return info

    def listing(self) -> list[ModelInfo]:
        """Built-ins, scenario-priced and `known` models, then every other name seen."""
        names = dict.fromkeys([*BUILTIN_MODELS, *self._prices, *self._known, *self._memo])
        return [self.info(name) for name in names]
