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


# -- the price model: tiers, cache TTLs, modalities, tools, variants, dates ----

from datetime import date  # noqa: E402

from kylon.prices import PriceTable, build_price, entry_price  # noqa: E402


def test_a_prompt_above_a_tier_pays_that_tier_for_the_whole_call():
    price = build_price({"input_mtok": {"base": "2", "tiers": [[200000, "4"]]}, "output_mtok": "12"})
    assert credits_for(Usage(input_tokens=200_000, output_tokens=10), price) == Decimal("0.40012")
    # 200,001 tokens: every token at 4, output unchanged (it has no tier).
    assert credits_for(Usage(input_tokens=200_001, output_tokens=10), price) == Decimal("0.800124")


def test_one_hour_cache_writes_cost_their_own_rate_and_five_minute_ones_the_write_rate():
    price = Price.of(input="3", output="15", cached_input="0.30", cache_write="3.75", cache_write_1h="6")
    usage = Usage(input_tokens=1000, cache_write_tokens=300, cache_write_1h_tokens=100)
    # 700 plain × 3 + 200 (5 min) × 3.75 + 100 (1 h) × 6, per million
    assert credits_for(usage, price) == Decimal("0.00345")
    # Without a 1-hour rate, 1-hour writes are billed as writes.
    assert credits_for(usage, Price.of(input="3", cache_write="3.75")) == Decimal("0.003225")


def test_modalities_are_parts_of_the_totals_billed_once_each():
    price = Price.of(input="0.30", cached_input="0.03", output="2.5", audio_input="1", cached_audio_input="0.1",
                     image_output="30")
    usage = Usage(input_tokens=100, cached_input_tokens=30, audio_input_tokens=40, cached_audio_input_tokens=10,
                  output_tokens=50, image_output_tokens=20)
    # text 40 × 0.30, cached text 20 × 0.03, audio 30 × 1, cached audio 10 × 0.1,
    # text output 30 × 2.5, image output 20 × 30
    assert credits_for(usage, price) == Decimal("0.0007186")  # genai-prices: 0.0007186


def test_server_tools_are_billed_per_call():
    price = Price.of(input="3", web_search="0.01")
    usage = Usage(input_tokens=10, tool_calls={"web_search": 3, "web_fetch": 2})
    assert credits_for(usage, price) == Decimal("0.03003")
    assert not Usage(tool_calls={"web_search": 1}).empty


def test_a_reported_service_tier_or_speed_picks_its_variant():
    standard = build_price({"input_mtok": "5", "output_mtok": "30"})
    price = build_price({"input_mtok": "5", "output_mtok": "30"},
                        [(("service_tier", "priority"), build_price({"input_mtok": "12.5", "output_mtok": "75"})),
                         (("speed", "fast"), build_price({"input_mtok": "10", "output_mtok": "50"}))])
    usage = Usage(input_tokens=1000, output_tokens=100)
    assert credits_for(usage, price) == credits_for(usage, standard) == Decimal("0.008")
    assert credits_for(Usage(input_tokens=1000, output_tokens=100, service_tier="priority"), price) == Decimal("0.02")
    assert credits_for(Usage(input_tokens=1000, output_tokens=100, speed="fast"), price) == Decimal("0.015")
    assert credits_for(Usage(input_tokens=1000, output_tokens=100, service_tier="flex"), price) == Decimal("0.008")


def test_prices_change_on_their_date():
    entry = {"id": "m", "prices": [{"from": None, "rates": {"input_mtok": "2", "output_mtok": "10"}},
                                   {"from": "2026-12-01", "rates": {"input_mtok": "4", "output_mtok": "20"}}],
             "variants": [{"when": "processing=batch", "from": "2026-12-01", "rates": {"input_mtok": "2"}},
                          {"when": "processing=batch", "from": "2026-10-14", "rates": {"input_mtok": "1"}}]}
    before, after = entry_price(entry, date(2026, 11, 30)), entry_price(entry, date(2026, 12, 1))
    assert (before.input, after.input) == (Decimal(2), Decimal(4))
    assert dict(before.variants)[("processing", "batch")].input == Decimal(1)
    assert dict(after.variants)[("processing", "batch")].input == Decimal(2)
    block = {"models": [entry], "fallback": {"model": "m", "per_unit": "0"}}
    table = PriceTable(block, date(2026, 11, 30))
    assert table["m"].input == table.fallback.input == Decimal(2)
    table.refresh(date(2026, 12, 1))
    assert table["m"].input == table.fallback.input == Decimal(4)


def test_an_override_wins_in_every_tier_and_variant():
    tiered = build_price({"input_mtok": {"base": "2", "tiers": [[200000, "4"]]}, "output_mtok": "12"},
                         [(("service_tier", "priority"), build_price({"input_mtok": "5", "output_mtok": "20"}))])
    book = PriceBook(defaults={"gemini": {"g": tiered}})
    book.overrides = {("gemini", "g"): {"input": Decimal("1"), "output": None}}
    price, _ = book.price("gemini", "g")
    big = Usage(input_tokens=300_000)
    assert credits_for(big, price) == Decimal("0.3")
    assert credits_for(Usage(input_tokens=10**6, service_tier="priority"), price) == Decimal("1")


def test_a_table_finds_models_by_genai_prices_match_rules():
    block = {"models": [{"id": "gemini-3.8-flash", "match": {"or": [{"starts_with": "gemini-3.8-flash"},
                                                                    {"equals": "gemini-flash-latest"}]},
                         "prices": [{"from": None, "rates": {"input_mtok": "0.75"}}]}],
             "fallback": {"model": None, "per_unit": "0"}}
    table = PriceTable(block)
    assert lookup_price(table, "gemini-flash-latest").input == Decimal("0.75")
    assert lookup_price(table, "Gemini-3.8-Flash-001").input == Decimal("0.75")
    assert lookup_price(table, "gemini-3.7-flash") is None
