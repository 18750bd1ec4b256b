"""Pricing: exact decimals, snapshots of priced models, fallbacks, overrides."""

from decimal import Decimal

from kylon.billing import Price, PriceBook, Usage, credits_for, lookup_price
from kylon.models import from_nano, to_nano


def test_token_prices_with_cache_reads_and_writes():
    price = Price.of(input="3", output="15", cached_input="0.30", cache_write="3.75")
    usage = Usage(input_tokens=1000, cached_input_tokens=200, cache_write_tokens=100, output_tokens=50)
    # 700 plain × 3 + 200 × 0.30 + 100 × 3.75 + 50 × 15, per million
    assert credits_for(usage, price) == Decimal("0.003285")


def test_cached_tokens_without_a_cache_price_cost_the_input_price():
    usage = Usage(input_tokens=10, cached_input_tokens=4, output_tokens=0)
    assert credits_for(usage, Price.of(input="1")) == Decimal("0.00001")


def test_units_and_reported_cost():
    assert credits_for(Usage(unit="images", units=Decimal(3)), Price.of(per_unit="0.04")) == Decimal("0.12")
    reported = Usage(input_tokens=10**6, output_tokens=10**6, reported_cost=Decimal("0.0000064"))
    assert credits_for(reported, Price.of(input="100", output="100")) == Decimal("0.0000064")


def test_no_float_error_over_many_calls():
    one = credits_for(Usage(input_tokens=7, output_tokens=3), Price.of(input="0.15", output="0.60"))
    assert sum([one] * 1000, Decimal(0)) == one * 1000
    assert from_nano(to_nano(one)) == one


def test_snapshot_names_find_their_model_but_other_models_do_not():
    table = {"gpt-4o": 1, "gpt-4o-mini": 2, "o3": 3, "claude-sonnet-4": 4}
    assert lookup_price(table, "gpt-4o-mini-2024-07-18") == 2
    assert lookup_price(table, "o3-2025-04-16") == 3
    assert lookup_price(table, "claude-sonnet-4@20250514") == 4
    assert lookup_price(table, "o3-pro") is None
    assert lookup_price(table, "gpt-4o-audio-preview") is None


def test_pricebook_fallback_and_overrides():
    book = PriceBook(
        defaults={"openai": {"gpt-4o-mini": Price.of(input="0.15", output="0.60", cached_input="0.075")}},
        fallbacks={"openai": Price.of(input="5", output="20")},
    )
    assert book.price("openai", "gpt-4o-mini") == (Price.of(input="0.15", output="0.60", cached_input="0.075"), False)
    assert book.price("openai", "mystery") == (Price.of(input="5", output="20"), True)
    book.overrides = {("openai", "gpt-4o-mini"): {"input": Decimal("1"), "output": None}}
    price, fallback = book.price("openai", "gpt-4o-mini-2024-07-18")
    assert price.input == Decimal("1") and price.output == Decimal("0.60") and not fallback
    book.overrides = {("openai", "mystery"): {"input": Decimal("2"), "output": Decimal("3")}}
    price, fallback = book.price("openai", "mystery")
    assert (price.input, price.output, fallback) == (Decimal("2"), Decimal("3"), False)
