"""Prices × usage → credits, in exact decimals.

Prices are credits per million tokens (and per unit for images, characters,
seconds). Each provider module ships its default table and a fallback price;
the operator's overrides (PriceOverride rows) win. A model without a price is
never free: it is charged the provider's fallback price and flagged.
"""

import re
from dataclasses import dataclass, field, replace
from decimal import Decimal

from .models import NANO_QUANTUM, PriceOverride

MILLION = Decimal(1_000_000)
PRICE_FIELDS = ("input", "cached_input", "cache_write", "output", "per_unit")


def D(value):
    return None if value is None else Decimal(str(value))


@dataclass(frozen=True)
class Price:
    input: Decimal = Decimal(0)
    output: Decimal = Decimal(0)
    # None: billed at the plain input price.
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    per_unit: Decimal = Decimal(0)

    @classmethod
    def of(cls, input=0, output=0, cached_input=None, cache_write=None, per_unit=0):
        return cls(D(input), D(output), D(cached_input), D(cache_write), D(per_unit))


@dataclass
class Usage:
    """What one call consumed, normalised across providers.

    `input_tokens` is all input, cached and cache-written included;
    `output_tokens` is all output, reasoning included (`reasoning_tokens` is
    the part of it spent thinking, for the record).
    """

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    unit: str = ""
    units: Decimal = Decimal(0)
    # A price the provider already reported (OpenRouter's usage.cost), in credits.
    reported_cost: Decimal | None = None
    estimated: bool = False

    @property
    def empty(self):
        return not (self.input_tokens or self.output_tokens or self.units or self.reported_cost)


def credits_for(usage: Usage, price: Price) -> Decimal:
    if usage.reported_cost is not None:
        return usage.reported_cost.quantize(NANO_QUANTUM)
    plain_input = max(usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens, 0)
    cached_price = price.input if price.cached_input is None else price.cached_input
    write_price = price.input if price.cache_write is None else price.cache_write
    tokens = (
        plain_input * price.input
        + usage.cached_input_tokens * cached_price
        + usage.cache_write_tokens * write_price
        + usage.output_tokens * price.output
    )
    total = tokens / MILLION + usage.units * price.per_unit
    return total.quantize(NANO_QUANTUM)


# A dated snapshot of a priced model costs what the model costs:
# gpt-4o-mini-2024-07-18, claude-sonnet-4-5-20250929, claude-sonnet-4@20250514.
# Anything else after the name (o3 vs o3-pro, claude-opus-4-7 vs claude-opus-4)
# is another model. A suffix is one date (8 digits or yyyy-mm-dd), a 3-4 digit
# version (gemini-2.0-flash-001, gpt-3.5-turbo-0125) or `latest`.
_SNAPSHOT_SUFFIX = re.compile(r"[-@](\d{8}|\d{4}-\d{2}-\d{2}|\d{3,4}|latest)\Z")


def lookup_price(table: dict, model: str):
    """The price of `model`: its own entry, else the entry it is a dated snapshot of."""
    if model in table:
        return table[model]
    m = _SNAPSHOT_SUFFIX.search(model)
    while m is not None:
        model = model[: m.start()]
        if model in table:
            return table[model]
        m = _SNAPSHOT_SUFFIX.search(model)
    return None


# Most calls name one of a few models: their prices are looked up once.
PRICE_CACHE_SIZE = 4096


@dataclass
class PriceBook:
    """Shipped defaults plus the operator's overrides, per provider.

    Lookups are cached per (provider, model) until `overrides` is replaced
    (`reload` assigns a fresh dict)."""

    defaults: dict = field(default_factory=dict)  # provider -> {model: Price}
    fallbacks: dict = field(default_factory=dict)  # provider -> Price
    overrides: dict = field(default_factory=dict)  # (provider, model) -> partial dict
    _cache: dict = field(default_factory=dict, repr=False)
    _cached_overrides: object = field(default=None, repr=False)

    async def reload(self, db):
        """Read the operator's overrides again (after an admin change, and
        periodically for changes made by other processes); the one place they
        are loaded."""
        self.overrides = await db.run(load_price_overrides)

    def price(self, provider, model):
        """(Price, is_fallback)"""
        return self._lookup(provider, model)[:2]

    def known_model(self, provider, model):
        return self._lookup(provider, model)[2]

    def _lookup(self, provider, model):
        if self._cached_overrides is not self.overrides or len(self._cache) >= PRICE_CACHE_SIZE:
            self._cache = {}
            self._cached_overrides = self.overrides
        key = (provider, model)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._compute(provider, model or "")
        return found

    def _compute(self, provider, model):
        """(Price, is_fallback, is_known)"""
        table = self.defaults.get(provider, {})
        base = lookup_price(table, model)
        override = self.overrides.get((provider, model))
        if override is None:
            # An override for a model covers its dated snapshots too.
            names = {m: m for (p, m) in self.overrides if p == provider}
            family = lookup_price(names, model)
            override = self.overrides.get((provider, family)) if family else None
        is_fallback = base is None and override is None
        known = base is not None or (provider, model) in self.overrides
        if base is None:
            base = self.fallbacks.get(provider, Price())
        if override:
            base = replace(base, **{k: v for k, v in override.items() if v is not None})
        return base, is_fallback, known


def load_price_overrides():
    """On the database thread: the operator's prices, as PriceBook.overrides."""
    return {(p.provider, p.model): {f: getattr(p, f) for f in PRICE_FIELDS} for p in PriceOverride.select()}
