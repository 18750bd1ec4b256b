"""Prices × usage → credits, in exact decimals.

Prices are credits per million tokens (and per call for server-side tools,
per unit for images, characters, seconds). The shipped prices come from
kylon/prices.json (kylon/prices.py reads it; scripts/update_prices.py makes
it from genai-prices); the operator's overrides (PriceOverride rows) win. A
model without a price is never free: it is charged the provider's fallback
price and flagged.

How a Price bills a Usage follows genai-prices: every count is a part of a
wider one (audio input tokens are input tokens, 1-hour cache writes are cache
writes), and each token is billed once, at the most specific rate the price
has: a rate left None bills its tokens as the wider count's.
"""

import calendar
import re
import time
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from decimal import Decimal

from .models import NANO_QUANTUM, PriceOverride

MILLION = Decimal(1_000_000)
ZERO = Decimal(0)
# The fields an operator overrides (admin API and pages, PriceOverride rows).
PRICE_FIELDS = ("input", "cached_input", "cache_write", "output", "per_unit")

# What each Usage count is part of: (Usage attribute, Price field, per, what
# it is). A count is part of every count whose description is a subset of its own.
UNITS = (
    ("input_tokens", "input", MILLION, {"input"}),
    ("cached_input_tokens", "cached_input", MILLION, {"input", "cache_read"}),
    ("cache_write_tokens", "cache_write", MILLION, {"input", "cache_write"}),
    ("cache_write_1h_tokens", "cache_write_1h", MILLION, {"input", "cache_write", "1h"}),
    ("audio_input_tokens", "audio_input", MILLION, {"input", "audio"}),
    ("cached_audio_input_tokens", "cached_audio_input", MILLION, {"input", "audio", "cache_read"}),
    ("image_input_tokens", "image_input", MILLION, {"input", "image"}),
    ("cached_image_input_tokens", "cached_image_input", MILLION, {"input", "image", "cache_read"}),
    ("video_input_tokens", "video_input", MILLION, {"input", "video"}),
    ("output_tokens", "output", MILLION, {"output"}),
    ("audio_output_tokens", "audio_output", MILLION, {"output", "audio"}),
    ("image_output_tokens", "image_output", MILLION, {"output", "image"}),
    ("video_output_tokens", "video_output", MILLION, {"output", "video"}),
    ("web_searches", "web_search", 1, {"web_search"}),
    ("file_searches", "file_search", 1, {"file_search"}),
    ("units", "per_unit", 1, {"units"}),
)
# Always priced (0 when unset): a count no other is part of.
_ROOTS = ("input", "output", "per_unit")


def D(value):
    return None if value is None else Decimal(str(value))


@dataclass(frozen=True)
class Price:
    input: Decimal = ZERO
    output: Decimal = ZERO
    # None: billed at the plain input price.
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    per_unit: Decimal = ZERO
    # None: billed as the wider count (1-hour writes as cache writes, audio
    # input as input, cached audio as cached input …).
    cache_write_1h: Decimal | None = None
    audio_input: Decimal | None = None
    cached_audio_input: Decimal | None = None
    image_input: Decimal | None = None
    cached_image_input: Decimal | None = None
    video_input: Decimal | None = None
    audio_output: Decimal | None = None
    image_output: Decimal | None = None
    video_output: Decimal | None = None
    # Credits per call of a server-side tool (web search, file search).
    web_search: Decimal | None = None
    file_search: Decimal | None = None
    # ((prompt tokens above which, Price), …), highest first: past a tier's
    # start the whole call pays that tier's prices.
    tiers: tuple = ()
    # (((context key, value), Price), …): the price of a service tier or
    # speed the provider reports (("service_tier", "priority"), ("speed", "fast")).
    variants: tuple = ()
    # The priced counts in billing order: (Usage attribute, credits per one,
    # positions in the plan of the narrower counts priced apart).
    plan: tuple = field(init=False, repr=False, compare=False)
    by_context: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "plan", billing_plan(self))
        object.__setattr__(self, "by_context", dict(self.variants))

    @classmethod
    def of(cls, input=0, output=0, cached_input=None, cache_write=None, per_unit=0, **rates):
        rates = {k: D(v) if k not in ("tiers", "variants") else v for k, v in rates.items()}
        return cls(D(input), D(output), D(cached_input), D(cache_write), D(per_unit), **rates)

    def for_usage(self, usage):
        """The price a call pays: its service tier's or speed's, then its prompt size's."""
        price = self
        if self.by_context and (usage.service_tier or usage.speed):
            price = self.by_context.get(("speed", usage.speed)) or self.by_context.get(
                ("service_tier", usage.service_tier), self)
        for start, tier in price.tiers:
            if usage.input_tokens > start:
                return tier
        return price

    def overridden(self, fields):
        """This price with the operator's `fields` in every tier and variant too."""
        return replace(
            self,
            **fields,
            tiers=tuple((start, p.overridden(fields)) for start, p in self.tiers),
            variants=tuple((key, p.overridden(fields)) for key, p in self.variants),
        )


def billing_plan(price):
    """Narrowest counts first, each with the positions of the narrower counts
    priced apart, which its own count excludes."""
    priced = [
        (attr, name, per, what)
        for attr, name, per, what in sorted(UNITS, key=lambda u: -len(u[3]))
        # A root at 0 bills nothing and no count is part of it: left out.
        if getattr(price, name) is not None and (name not in _ROOTS or getattr(price, name))
    ]
    plan = []
    for attr, name, per, what in priced:
        inner = tuple(i for i, (_, _, _, other) in enumerate(priced[: len(plan)]) if what < other)
        plan.append((attr, getattr(price, name) / per, inner))
    return tuple(plan)


@dataclass
class Usage:
    """What one call consumed, normalised across providers.

    `input_tokens` is all input, cached and cache-written included;
    `output_tokens` is all output, reasoning included (`reasoning_tokens` is
    the part of it spent thinking, for the record). The modality counts are
    parts of those totals (audio_input_tokens of input_tokens,
    cached_audio_input_tokens of both cached_input_tokens and
    audio_input_tokens), `cache_write_1h_tokens` the part of
    cache_write_tokens kept an hour.
    """

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    unit: str = ""
    units: Decimal = ZERO
    # A price the provider already reported (OpenRouter's usage.cost), in credits.
    reported_cost: Decimal | None = None
    estimated: bool = False
    cache_write_1h_tokens: int = 0
    audio_input_tokens: int = 0
    cached_audio_input_tokens: int = 0
    image_input_tokens: int = 0
    cached_image_input_tokens: int = 0
    video_input_tokens: int = 0
    audio_output_tokens: int = 0
    image_output_tokens: int = 0
    video_output_tokens: int = 0
    # Server-side tool calls by name ("web_search", "web_fetch", "file_search"), or None.
    tool_calls: dict | None = None
    # As the provider reported them: they choose the price's variant.
    service_tier: str = ""
    speed: str = ""

    @property
    def empty(self):
        return not (self.input_tokens or self.output_tokens or self.units or self.reported_cost or self.tool_calls)

    @property
    def web_searches(self):
        return self.tool_calls.get("web_search", 0) if self.tool_calls else 0

    @property
    def file_searches(self):
        return self.tool_calls.get("file_search", 0) if self.tool_calls else 0


def added(a: Usage, b: Usage) -> Usage:
    """The usage of two parts of one call together (a WebSocket session's
    turns): counts and reported costs summed, tool calls merged, a flag or a
    name kept from either."""
    values = {}
    for f in fields(Usage):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, bool) or isinstance(x, str):
            values[f.name] = x or y
        elif f.name == "tool_calls":
            merged = dict(x or {})
            for name, count in (y or {}).items():
                merged[name] = merged.get(name, 0) + count
            values[f.name] = merged or None
        elif x is None or y is None:
            values[f.name] = y if x is None else x
        else:
            values[f.name] = x + y
    return Usage(**values)


def credits_for(usage: Usage, price: Price) -> Decimal:
    if usage.reported_cost is not None:
        return usage.reported_cost.quantize(NANO_QUANTUM)
    price = price.for_usage(usage)
    parts = []  # each priced count less its narrower counts priced apart
    total = ZERO
    for attr, rate, inner in price.plan:
        count = getattr(usage, attr)
        for i in inner:
            count -= parts[i]
        if count < 0:
            count = 0
        parts.append(count)
        total += count * rate
    return total.quantize(NANO_QUANTUM)


# A dated snapshot of a priced model costs what the model costs:
# gpt-4o-mini-2024-07-18, claude-sonnet-4-5-20250929, claude-sonnet-4@20250514.
# Anything else after the name (o3 vs o3-pro, claude-opus-4-7 vs claude-opus-4)
# is another model. A suffix is one date (8 digits or yyyy-mm-dd), a 3-4 digit
# version (gemini-2.0-flash-001, gpt-3.5-turbo-0125) or `latest`.
_SNAPSHOT_SUFFIX = re.compile(r"[-@](\d{8}|\d{4}-\d{2}-\d{2}|\d{3,4}|latest)\Z")


def lookup_price(table: dict, model: str):
    """The price of `model`: its own entry, the entry whose match rules take it
    (a prices.PriceTable's), else the entry it is a dated snapshot of."""
    if model in table:
        return table[model]
    match = getattr(table, "match", None)
    found = match(model) if match is not None else None
    if found is not None:
        return found
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
    (`reload` assigns a fresh dict) or a shipped price changes by date (the
    tables with `refresh` say when: `next_change`)."""

    defaults: dict = field(default_factory=dict)  # provider -> {model: Price}
    fallbacks: dict = field(default_factory=dict)  # provider -> Price
    overrides: dict = field(default_factory=dict)  # (provider, model) -> partial dict
    _cache: dict = field(default_factory=dict, repr=False)
    _cached_overrides: object = field(default=None, repr=False)
    _valid_until: float = field(default=0.0, repr=False)  # time.time()

    async def reload(self, db):
        """Read the operator's overrides again (after an admin change, and
        periodically for changes made by other processes); the one place they
        are loaded."""
        overrides = await db.run(load_price_overrides)
        # Unchanged: keep the dict, and with it every cached lookup.
        if overrides != self.overrides:
            self.overrides = overrides

    def price(self, provider, model):
        """(Price, is_fallback)"""
        return self._lookup(provider, model)[:2]

    def known_model(self, provider, model):
        return self._lookup(provider, model)[2]

    def _lookup(self, provider, model):
        if self._cached_overrides is not self.overrides or len(self._cache) >= PRICE_CACHE_SIZE:
            self._cache = {}
            self._cached_overrides = self.overrides
        if time.time() >= self._valid_until:
            self._roll_dates()
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
            base = base.overridden({k: v for k, v in override.items() if v is not None})
        return base, is_fallback, known

    def _roll_dates(self):
        """Today's prices in the shipped tables (prices.PriceTable, dated
        prices included) and their fallbacks; the cache holds until midnight UTC."""
        today = utc_today()
        for provider, table in self.defaults.items():
            if getattr(table, "day", today) != today:
                table.refresh(today)
                self.fallbacks[provider] = table.fallback
        self._cache = {}
        self._valid_until = calendar.timegm(today.timetuple()) + 86400


def utc_today():
    """The day prices are dated by (genai-prices' dates are UTC days)."""
    return datetime.now(timezone.utc).date()


def load_price_overrides():
    """On the database thread: the operator's prices, as PriceBook.overrides."""
    return {(p.provider, p.model): {f: getattr(p, f) for f in PRICE_FIELDS} for p in PriceOverride.select()}
