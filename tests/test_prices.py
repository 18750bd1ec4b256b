"""The shipped price file: made from the pinned genai-prices, byte for byte;
every model the SDKs name has a price or is listed as not priced; Kylon's
reading of genai-prices' match rules finds the models genai-prices finds."""

import os
import subprocess
import sys
import typing

import anthropic.types
import genai_prices
import openai.types
import pytest
from genai_prices import data_snapshot

from kylon import prices
from kylon.billing import lookup_price

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENAI_ID = {"openai": "openai", "anthropic": "anthropic", "gemini": "google", "cerebras": "cerebras"}


def test_the_committed_file_is_what_the_script_makes_from_the_pinned_version():
    assert genai_prices.__version__ == "0.2.3"  # requirements-dev.txt
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import update_prices
    finally:
        sys.path.pop(0)
    with open(prices.PATH, encoding="utf-8", newline="") as f:
        assert f.read() == update_prices.render()


def test_the_check_mode_says_the_file_is_current():
    done = subprocess.run([sys.executable, "scripts/update_prices.py", "--check"], cwd=ROOT, capture_output=True)
    assert done.returncode == 0, done.stdout


def enum_models(literal):
    """The names of a Literal, or of the Literals in a Union (anthropic's Model)."""
    names = []
    for arg in typing.get_args(literal):
        names += [arg] if isinstance(arg, str) else enum_models(arg)
    return names


@pytest.mark.parametrize(
    "provider, literal",
    [("openai", openai.types.ChatModel), ("anthropic", anthropic.types.Model)],
)
def test_every_model_of_the_sdk_enums_has_a_price_or_is_listed_as_not_priced(provider, literal):
    models = enum_models(literal)
    assert len(models) >= 20
    table = prices.table(provider)
    not_priced = table.block["not_priced"]
    missing = [m for m in models if lookup_price(table, m) is None and m not in not_priced]
    assert missing == []


def test_not_priced_models_are_left_to_the_flagged_fallback():
    table = prices.table("openai")
    assert table.block["not_priced"]["tts-1"] == "priced by a unit Kylon does not count"
    assert "tts-1" not in table and lookup_price(table, "tts-1") is None


@pytest.mark.parametrize("provider", sorted(GENAI_ID))
def test_names_find_the_model_genai_prices_finds(provider):
    """Every model id and every `equals` name of genai-prices' table, looked
    up by Kylon and by genai-prices, gives the same model."""
    table = prices.table(provider)
    snapshot = data_snapshot.get_snapshot()
    genai = next(p for p in snapshot.providers if p.id == GENAI_ID[provider])
    names = set()
    for entry in table.block["models"]:
        names.add(entry["id"])
        stack = [entry.get("match") or {}]
        while stack:
            rule = stack.pop()
            for kind, value in rule.items():
                if kind in ("or", "and"):
                    stack.extend(value)
                elif kind == "equals":
                    names.add(value)
    for name in sorted(names):
        model = genai.find_model(name)
        assert table.matching_id(name) == (model.id if model else None), name


def test_the_fallback_is_the_dearest_current_model():
    assert prices.table("openai").block["fallback"] == {"model": "o1-pro", "per_unit": "0.00001"}
    assert prices.table("anthropic").block["fallback"]["model"] == "claude-opus-4-1"
    assert prices.table("cerebras").block["fallback"]["model"] == "qwen-3.8-27b"
    assert prices.table("elevenlabs").fallback.per_unit == prices.table("elevenlabs")["eleven_v3"].per_unit
