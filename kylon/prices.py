"""The shipped prices: kylon/prices.json, read once at start-up.

scripts/update_prices.py writes the file from genai-prices (a development
dependency only) plus Kylon's own entries. Each provider's block has its
models (genai-prices' match rules, dated prices, tiers by prompt size and
service-tier variants, as JSON) and the model whose price unknown models pay.
A provider module takes its table with `table("openai")`.
"""

import json
import os
import re
from datetime import date
from decimal import Decimal

from .billing import Price, utc_today

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prices.json")

# genai-prices' price keys -> (Price field, what their figure is per).
RATE_FIELDS = {
    "input_mtok": "input",
    "output_mtok": "output",
    "cache_read_mtok": "cached_input",
    "cache_write_mtok": "cache_write",
    "cache_write_1h_mtok": "cache_write_1h",
    "input_audio_mtok": "audio_input",
    "cache_audio_read_mtok": "cached_audio_input",
    "output_audio_mtok": "audio_output",
    "input_image_mtok": "image_input",
    "cache_image_read_mtok": "cached_image_input",
    "output_image_mtok": "image_output",
    "input_video_mtok": "video_input",
    "output_video_mtok": "video_output",
    # Per thousand calls in genai-prices, per call in a Price.
    "web_searches_kcount": "web_search",
    "storage_searches_kcount": "file_search",
    "per_unit": "per_unit",
}
PER_THOUSAND = ("web_searches_kcount", "storage_searches_kcount")
_COMPACT_DATE = re.compile(r"-(20\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?=-|:|$)")


def flat(rates, level):
    """The Price fields of `rates` for prompts above `level` tokens (None: the base)."""
    fields = {}
    for key, value in rates.items():
        if isinstance(value, dict):
            value = next((p for start, p in reversed(value["tiers"]) if level is not None and start <= level),
                         value["base"])
        figure = Decimal(value)
        fields[RATE_FIELDS[key]] = figure / 1000 if key in PER_THOUSAND else figure
    return fields


def build_price(rates, variants=()):
    """A Price from genai-prices' rates: a tiered rate becomes a Price per tier."""
    starts = sorted({start for v in rates.values() if isinstance(v, dict) for start, _ in v["tiers"]}, reverse=True)
    tiers = tuple((start, Price(**flat(rates, start))) for start in starts)
    return Price(**flat(rates, None), tiers=tiers, variants=tuple(variants))


def in_force(dated, day):
    """The last of `dated` (each with "from": an ISO day or None) in force on
    `day`; the first when none is yet, as genai-prices does."""
    for item in reversed(dated):
        if item["from"] is None or date.fromisoformat(item["from"]) <= day:
            return item
    return dated[0]


def entry_price(entry, day):
    """The Price of a model entry on `day`, with its variants of that day."""
    rates = in_force(entry["prices"], day)["rates"]
    variants = {}
    for variant in entry.get("variants", ()):
        if variant["from"] is not None and date.fromisoformat(variant["from"]) > day:
            continue
        key = tuple(variant["when"].split("=", 1))
        # Key by key, the first variant in force gives the rate (genai-prices' rule).
        variants.setdefault(key, {}).update({k: v for k, v in variant["rates"].items()
                                             if k not in variants.get(key, {})})
    return build_price(rates, ((key, build_price({**rates, **extra})) for key, extra in sorted(variants.items())))


def matches(rule, name):
    """genai-prices' match logic on a lower-case model name."""
    (kind, value), = rule.items()
    if kind == "equals":
        return name == value.lower()
    if kind == "starts_with":
        return name.startswith(value.lower())
    if kind == "ends_with":
        return name.endswith(value.lower())
    if kind == "contains":
        return value.lower() in name
    if kind == "regex":
        return re.search(value, name) is not None
    if kind == "or":
        return any(matches(r, name) for r in value)
    if kind == "and":
        return all(matches(r, name) for r in value)
    raise ValueError(f"unknown match rule {kind!r}")


class PriceTable(dict):
    """Model id -> its Price today, for one provider; `match` finds the
    model a name belongs to by genai-prices' rules."""

    def __init__(self, block, day=None):
        super().__init__()
        self.block = block
        self.refresh(day or utc_today())

    def refresh(self, day):
        self.clear()
        for entry in self.block["models"]:
            self[entry["id"]] = entry_price(entry, day)
        fallback = self.block["fallback"]
        base = self[fallback["model"]] if fallback["model"] else Price()
        self.fallback = base.overridden({"per_unit": Decimal(fallback["per_unit"])})
        self.day = day
        self._matched = {}

    def match(self, model):
        """The Price of the model `model` belongs to by the match rules, or None."""
        found = self.matching_id(model)
        return None if found is None else self[found]

    def matching_id(self, model):
        """The id of the model `model` belongs to, or None (remembered: the
        rules are scanned once per name, whatever clears the PriceBook's cache)."""
        if model in self._matched:
            return self._matched[model]
        if len(self._matched) >= 4096:
            self._matched.clear()
        found = self._matched[model] = self._scan(model)
        return found

    def _scan(self, model):
        name = model.lower()
        found = self._first_match(name)
        if found is None:
            # Compact dates (gpt-5.2-20251211) are tried as yyyy-mm-dd too.
            dashed = _COMPACT_DATE.sub(r"-\1-\2-\3", name)
            found = self._first_match(dashed) if dashed != name else None
        return found

    def _first_match(self, name):
        for entry in self.block["models"]:
            rule = entry.get("match")
            if rule is not None and matches(rule, name):
                return entry["id"]
        return None


def load(path=PATH):
    with open(path, encoding="utf-8") as f:
        return json.load(f)["providers"]


_blocks = None


def table(provider):
    """The shipped price table of a Kylon provider (the file is read once)."""
    global _blocks
    if _blocks is None:
        _blocks = load()
    return PriceTable(_blocks[provider])
