"""Regenerates kylon/prices.json from the installed genai-prices (pinned in
requirements-dev.txt) plus Kylon's own entries for what it lacks.

    python scripts/update_prices.py           # writes kylon/prices.json
    python scripts/update_prices.py --check   # exit 1 when the file differs

The output depends only on the genai-prices version and this file: models
sorted by id, one per line, decimals as strings, no dates of the run. Kylon
reads the file at start-up and never imports genai-prices.
"""

import argparse
import dataclasses
import json
import os
import sys
from decimal import Decimal
from importlib.metadata import version

from genai_prices import types
from genai_prices.data import providers as GENAI_PROVIDERS

HERE = os.path.dirname(os.path.abspath(__file__))
OUTPUT = os.path.join(HERE, "..", "kylon", "prices.json")

# Kylon provider -> the genai-prices provider whose table it bills by.
SOURCES = {
    "openai": "openai",
    "anthropic": "anthropic",
    "anthropic-vertex": "anthropic",  # global endpoint: Anthropic's list prices
    "gemini": "google",
    "cerebras": "cerebras",
    "openrouter": "openrouter",
    "elevenlabs": None,  # its characters are Kylon's own entries
}

# Where a genai-prices provider lists other vendors' models too (Google's
# table has Claude on Vertex AI), the ids a Kylon provider takes from it.
ONLY = {"gemini": ("gemini-", "gemma-")}

# genai-prices price keys Kylon bills (kylon/billing.py RATE_FIELDS has the
# same names). A model priced by any other key (characters, audio hours,
# per-request fees) is left out: Kylon cannot count that unit, so the model
# falls to the fallback price, flagged, rather than being billed short.
BILLED_KEYS = {
    "input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok",
    "input_audio_mtok", "cache_audio_read_mtok", "output_audio_mtok",
    "input_image_mtok", "cache_image_read_mtok", "output_image_mtok",
    "input_video_mtok", "output_video_mtok", "web_searches_kcount", "storage_searches_kcount",
}

# OpenAI's image routes record image input tokens as units
# ("image_input_tokens", kylon/providers/openai.py): per_unit is then the
# price of one image input token.
UNIT_RATES = {"openai": "input_image_mtok", "openrouter": None}

# Models the SDKs name (openai's ChatModel, anthropic's Model) that genai-prices
# 0.2.3 has no price for: listed so the gap is explicit; they pay the
# provider's fallback price, flagged, until genai-prices prices them.
NO_SOURCE = "named by the official SDK, not priced by genai-prices"
UNKNOWN = {
    "openai": ["gpt-6.2-astra", "gpt-6.2-sol"],
    "anthropic": ["claude-mythos-5", "claude-mythos-5-1", "claude-mythos-preview"],
    "anthropic-vertex": ["claude-mythos-5", "claude-mythos-5-1", "claude-mythos-preview"],
}

OPENAI_IMAGES = "OpenAI pricing page, Image generation (per image), as kept in Kylon since DALL-E launched"
ELEVENLABS = ("ElevenLabs pricing page: Creator plan $0.30 per 1,000 credits; Multilingual v1/v2, v3 and "
              "English v1 spend 1 credit a character, Flash and Turbo 0.5")
# Kylon's own entries: (provider, model, {"per_unit": credits}, source).
OWN_ENTRIES = [
    ("openai", "dall-e-3", "0.04", OPENAI_IMAGES + " (standard 1024x1024)"),
    ("openai", "dall-e-3 standard 1024x1792", "0.08", OPENAI_IMAGES),
    ("openai", "dall-e-3 standard 1792x1024", "0.08", OPENAI_IMAGES),
    ("openai", "dall-e-3 hd 1024x1024", "0.08", OPENAI_IMAGES),
    ("openai", "dall-e-3 hd 1024x1792", "0.12", OPENAI_IMAGES),
    ("openai", "dall-e-3 hd 1792x1024", "0.12", OPENAI_IMAGES),
    ("openai", "dall-e-2", "0.02", OPENAI_IMAGES + " (1024x1024)"),
    ("openai", "dall-e-2 512x512", "0.018", OPENAI_IMAGES),
    ("openai", "dall-e-2 256x256", "0.016", OPENAI_IMAGES),
    ("elevenlabs", "eleven_v3", "0.0003", ELEVENLABS),
    ("elevenlabs", "eleven_multilingual_v2", "0.0003", ELEVENLABS),
    ("elevenlabs", "eleven_multilingual_v1", "0.0003", ELEVENLABS),
    ("elevenlabs", "eleven_monolingual_v1", "0.0003", ELEVENLABS),
    ("elevenlabs", "eleven_flash_v2_5", "0.00015", ELEVENLABS),
    ("elevenlabs", "eleven_flash_v2", "0.00015", ELEVENLABS),
    ("elevenlabs", "eleven_turbo_v2_5", "0.00015", ELEVENLABS),
    ("elevenlabs", "eleven_turbo_v2", "0.00015", ELEVENLABS),
]


def text(value):
    """A Decimal as its plain string: 0.075, 10, 2.5."""
    return format(Decimal(value).normalize(), "f")


def rate(value):
    if isinstance(value, types.TieredPrices):
        return {"base": text(value.base), "tiers": [[t.start, text(t.price)] for t in value.tiers]}
    return text(value)


def rates(model_price):
    """{key: rate} of a ModelPrice, or None when a key is one Kylon cannot bill."""
    found = {k: v for k, v in model_price.__dict__.items() if not k.startswith("_") and v is not None}
    if set(found) - BILLED_KEYS:
        return None
    return {k: rate(v) for k, v in sorted(found.items())}


def clause(match):
    """genai-prices' match logic as plain JSON: {"equals": …}, {"or": […]} …"""
    if isinstance(match, types.ClauseOr):
        return {"or": [clause(c) for c in match.or_]}
    if isinstance(match, types.ClauseAnd):
        return {"and": [clause(c) for c in match.and_]}
    (name, value), = dataclasses.asdict(match).items()
    return {name: value}


def start(constraint):
    if constraint is None:
        return None
    if not isinstance(constraint, types.StartDateConstraint):
        raise SystemExit(f"unsupported price constraint {constraint!r}")
    return constraint.start_date.isoformat()


def model_entry(model, unit_rate):
    """The JSON entry of one genai-prices model, or (None, reason)."""
    dated = model.prices if isinstance(model.prices, list) else [types.ConditionalPrice(prices=model.prices)]
    prices = []
    for conditional in dated:
        found = rates(conditional.prices)
        if found is None:
            return None, "priced by a unit Kylon does not count"
        prices.append({"from": start(conditional.constraint), "rates": with_unit_rate(found, unit_rate)})
    if not any(p["rates"] for p in prices):
        return None, "no price in genai-prices"
    variants = []
    for variant in model.price_variants or ():
        found = rates(variant.prices)
        if found is None:
            continue
        when = ",".join(f"{k}={v}" for k, v in sorted(variant.when.items()))
        variants.append({"when": when, "from": start(variant.constraint), "rates": with_unit_rate(found, unit_rate)})
    entry = {"id": model.id, "match": clause(model.match), "prices": prices}
    if variants:
        entry["variants"] = variants
    if model.deprecated:
        entry["deprecated"] = True
    return entry, None


def with_unit_rate(found, unit_rate):
    value = found.get(unit_rate) if unit_rate else None
    if isinstance(value, str):
        found = {**found, "per_unit": text(Decimal(value) / 1_000_000)}
    return found


def dearness(entry):
    """How dear a model is: input plus output per million tokens at its
    latest price and highest tier (the run's date plays no part)."""
    latest = entry["prices"][-1]["rates"]

    def top(key):
        value = latest.get(key, "0")
        return Decimal(value["tiers"][-1][1] if isinstance(value, dict) else value)

    return top("input_mtok") + top("output_mtok"), len(latest), entry["id"]


def provider_block(kylon_name, genai_id):
    models, skipped = [], {}
    if genai_id is not None:
        source = next(p for p in GENAI_PROVIDERS if p.id == genai_id)
        for model in source.models:
            if not model.id.startswith(ONLY.get(kylon_name, "")):
                continue
            entry, reason = model_entry(model, UNIT_RATES.get(kylon_name))
            if entry is None:
                skipped[model.id] = reason
            else:
                models.append(entry)
    own = [
        {"id": model, "prices": [{"from": None, "rates": {"per_unit": per_unit}}], "source": note}
        for provider, model, per_unit, note in OWN_ENTRIES
        if provider == kylon_name
    ]
    skipped.update({model: NO_SOURCE for model in UNKNOWN.get(kylon_name, ())})
    current = [m for m in models if not m.get("deprecated")]
    dearest = max(current, key=dearness)["id"] if current else None
    unit_prices = [Decimal(m["prices"][-1]["rates"]["per_unit"]) for m in models if "per_unit" in m["prices"][-1]["rates"]]
    unit_prices = unit_prices or [Decimal(e["prices"][0]["rates"]["per_unit"]) for e in own]
    fallback = {"model": dearest, "per_unit": text(max(unit_prices)) if unit_prices else "0"}
    return {
        "source": f"genai-prices provider '{genai_id}'" if genai_id else "Kylon's own entries",
        "fallback": fallback,
        "models": sorted(models + own, key=lambda m: m["id"]),
        "not_priced": dict(sorted(skipped.items())),
    }


def render():
    """The file's text: one model a line so a price change is a one-line diff."""
    lines = ["{", f' "genai_prices": {json.dumps(version("genai-prices"))},', ' "providers": {']
    names = sorted(SOURCES)
    for i, name in enumerate(names):
        block = provider_block(name, SOURCES[name])
        lines.append(f"  {json.dumps(name)}: {{")
        for key in ("source", "fallback", "not_priced"):
            lines.append(f"   {json.dumps(key)}: {json.dumps(block[key], sort_keys=True)},")
        lines.append('   "models": [')
        models = block["models"]
        for j, model in enumerate(models):
            comma = "," if j < len(models) - 1 else ""
            lines.append("    " + json.dumps(model, sort_keys=True, separators=(",", ":")) + comma)
        lines.append("   ]")
        lines.append("  }" + ("," if i < len(names) - 1 else ""))
    lines += [" }", "}"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether kylon/prices.json is current")
    args = parser.parse_args(argv)
    new = render()
    old = ""
    if os.path.exists(OUTPUT):
        with open(OUTPUT, encoding="utf-8") as f:
            old = f.read()
    if args.check:
        print("kylon/prices.json is current" if new == old else "kylon/prices.json differs: run scripts/update_prices.py")
        return 0 if new == old else 1
    with open(OUTPUT, "w", encoding="utf-8", newline="\n") as f:
        f.write(new)
    print(f"wrote {os.path.relpath(OUTPUT)} from genai-prices {version('genai-prices')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
