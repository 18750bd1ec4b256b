"""The pieces of a proxied call that decide, tested directly (no server):
admission, outcome classification, the usage record, the credit balances."""

import datetime
from decimal import Decimal

import pytest
from hypothesis import given, strategies as st

from kylon import metrics, relay
from kylon.auth import AgentEntry, GateTable, KeyEntry
from kylon.billing import Price, PriceBook, Usage
from kylon.calls import admission
from kylon.calls.outcome import FINAL, NOTHING, PARTIAL, Facts, classify, whole_answer_sent
from kylon.calls.record import CallState, build_record
from kylon.credits import Balance, Balances
from kylon.models import UsageStatus
from kylon.providers import Exchange, load_providers



def fresh_providers(env):
    """Provider objects of this test's own (the loaded ones are shared by every test)."""
    providers = {}
    for name, shared in load_providers({}).items():
        providers[name] = type(shared)()
        providers[name].configure(env)
    return providers


PROVIDERS = fresh_providers({"OPENAI_API_KEY": "sk-test"})
OPENAI = PROVIDERS["openai"]


# -- admission ----------------------------------------------------------------


@pytest.mark.parametrize("reason, presented, message", [
    ("invalid", False, "Missing Kylon API key."),
    ("invalid", True, "Invalid Kylon API key."),
    ("revoked", True, "This Kylon API key has been revoked."),
    ("expired", True, "This Kylon API key has expired."),
    ("session", False, "Unknown session."),
])
def test_key_refusals(reason, presented, message):
    refusal = admission.key_refusal(reason, presented, {"session": "Unknown session."})
    assert refusal == (401, message, "key")


def check(path="/v1/chat/completions", method="POST", provider=OPENAI, skills=(), available=Decimal(1), gates=None):
    route, allowed = provider.match(path, method)
    return admission.check_call(provider, route, allowed, path, method, frozenset(skills),
                                Balance(committed=available), gates or GateTable())


def test_a_good_call_is_admitted():
    assert check() is None


@pytest.mark.parametrize("kwargs, status, reason", [
    (dict(path="/v1/../admin"), 400, "path"),
    (dict(path="/v1/nothing-here"), 404, "bad_request"),
    (dict(method="GET"), 405, "bad_request"),
    (dict(provider=PROVIDERS["anthropic"], path="/v1/messages"), 503, "not_configured"),
    (dict(gates=GateTable({("openai", "/v1/chat"): "chat"})), 403, "gate"),
    (dict(available=Decimal(0)), 402, "credits"),
])
def test_each_refusal(kwargs, status, reason):
    refusal = check(**kwargs)
    assert (refusal.status, refusal.reason) == (status, reason)


def test_the_checks_come_in_order():
    # Unconfigured and out of credits and gated: the configuration is named first.
    refusal = check(provider=PROVIDERS["anthropic"], path="/v1/messages", available=Decimal(-1),
                    gates=GateTable({("anthropic", ""): "claude"}))
    assert refusal.status == 503 and "ANTHROPIC_API_KEY" in refusal.message
    gated = check(available=Decimal(0), gates=GateTable({("openai", ""): "gpt"}))
    assert gated.status == 403 and "'gpt'" in gated.message
    assert check(skills=["gpt"], gates=GateTable({("openai", ""): "gpt"})) is None


@pytest.mark.parametrize("declared, status", [(None, None), ("100", None), ("1000", None), ("1001", 413),
                                              ("ten", 400)])
def test_declared_size(declared, status):
    refusal = admission.check_declared_size(declared, 1000)
    assert (refusal.status if refusal else None) == status


@pytest.mark.parametrize("body, words", [
    (b"{", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"model": 5}', "'model' must be a string."),
    (b'{"model": "gpt-4o", "stream": "yes"}', "'stream' must be true or false."),
    (b'{"max_tokens": 1.5}', "'max_tokens' must be an integer."),
])
def test_bad_bodies(body, words):
    request_json, refusal = admission.read_json_body(OPENAI, body)
    assert request_json is None and refusal.status == 400 and words in refusal.message


def test_a_good_body():
    assert admission.read_json_body(OPENAI, b'{"model": "gpt-4o", "max_tokens": 3}') == (
        {"model": "gpt-4o", "max_tokens": 3}, None)


@pytest.mark.parametrize("content_length, transfer_encoding, framed", [
    (None, None, True), ("12", None, True), (None, "chunked", True), (None, "Chunked", True),
    ("5", "chunked", False), ("5,6", None, False), ("5,5", None, False), ("-1", None, False),
    ("\u0661", None, False), (None, "gzip", False), (None, "chunked, gzip", False),
])
def test_framing_is_checked_before_the_key(content_length, transfer_encoding, framed):
    refusal = admission.check_framing(content_length, transfer_encoding)
    assert (refusal is None) == framed
    if refusal is not None:
        assert (refusal.status, refusal.reason) == (400, "framing")


MINI = Price.of(input="0.15", output="0.60")


def test_a_hold_must_fit_the_balance():
    usage = Usage(input_tokens=100, output_tokens=1000)  # 0.000615 credits at gpt-4o-mini's prices
    assert admission.check_hold(usage, MINI, Balance(Decimal("0.000615"))) == (Decimal("0.000615000"), None)
    hold, refusal = admission.check_hold(usage, MINI, Balance(Decimal("0.0000117")))
    assert hold is None and (refusal.status, refusal.reason) == (402, "credits")
    assert refusal.message == ("Agent balance too low: this call may cost up to 0.000615 credits; the agent has "
                               "0.0000117 available (its balance 0.0000117 less 0 held by its running calls). "
                               "The balance does not reset: the operator adds credits.")
    # A hold too large for 28 digits is refused, not an error.
    huge = Usage(output_tokens=10**16)
    hold, refusal = admission.check_hold(huge, Price.of(output="999999999"), Balance(Decimal(10**8)))
    assert hold is None and refusal.status == 402


@given(balance=st.decimals(min_value=Decimal("0.000000001"), max_value=Decimal(1000), places=9),
       holds=st.lists(st.decimals(min_value=Decimal(0), max_value=Decimal(2000), places=9), max_size=30))
def test_running_holds_never_exceed_the_balance(balance, holds):
    """The bound stated in README ("Holds"): whatever calls come, the ones
    admitted on one process hold at most the balance together."""
    balances = Balances()
    balances.set_committed(1, balance)
    account = balances.of(1)
    for amount in holds:
        usage = Usage(units=amount, unit="credits")
        if admission.check_call(OPENAI, OPENAI.routes[0], True, "/v1/chat/completions", "POST", frozenset(),
                                account, GateTable()) is not None:
            continue
        hold, refusal = admission.check_hold(usage, Price.of(per_unit=1), account)
        if refusal is None:
            account.hold(hold)
    assert account.held <= balance


# -- outcome ------------------------------------------------------------------


def facts(transfer=relay.COMPLETED, status=200, **kwargs):
    values = dict(client_gone=False, interrupted=False, headers_sent=True, whole_answer_sent=False)
    values.update(kwargs)
    return Facts(transfer, status, **values)


@pytest.mark.parametrize("case, status, http_status, usage, metric, answer", [
    (facts(), UsageStatus.COMPLETED, 200, FINAL, "", "complete"),
    (facts(status=429), UsageStatus.UPSTREAM_ERROR, 429, NOTHING, "http_4xx", "complete"),
    (facts(status=503), UsageStatus.UPSTREAM_ERROR, 503, NOTHING, "http_5xx", "complete"),
    (facts(stream_error="overloaded"), UsageStatus.UPSTREAM_ERROR, 200, FINAL, "in_stream", "complete"),
    (facts(bad_answer="not JSON"), UsageStatus.ERROR, 502, FINAL, "", (502, "not JSON")),
    # The client left: after the whole stream, on an error chunk, or mid-way.
    (facts(relay.CANCELLED, client_gone=True, whole_answer_sent=True), UsageStatus.COMPLETED, 200, FINAL, "", None),
    (facts(relay.CANCELLED, client_gone=True, stream_error="boom"), UsageStatus.UPSTREAM_ERROR, 200, FINAL,
     "in_stream", None),
    (facts(relay.CANCELLED, client_gone=True), UsageStatus.DISCONNECTED, 200, PARTIAL, "disconnect", None),
    (facts(relay.CANCELLED, 0, client_gone=True, headers_sent=False), UsageStatus.DISCONNECTED, 499, PARTIAL,
     "disconnect", None),
    (facts(client_gone=True), UsageStatus.DISCONNECTED, 200, FINAL, "disconnect", None),
    # Shutdown.
    (facts(relay.CANCELLED, interrupted=True), UsageStatus.INTERRUPTED, 200, PARTIAL, "", "end"),
    (facts(relay.CANCELLED, 0, interrupted=True, headers_sent=False), UsageStatus.INTERRUPTED, 503, PARTIAL, "",
     (503, "Kylon is shutting down.")),
    # The upstream failed.
    (facts(relay.TIMEOUT, 0, headers_sent=False), UsageStatus.ERROR, 504, PARTIAL, "timeout",
     (504, "The upstream did not answer in time.")),
    (facts(relay.UNREACHABLE, 0, headers_sent=False), UsageStatus.ERROR, 502, PARTIAL, "unreachable",
     (502, "The upstream could not be reached.")),
    (facts(relay.BROKEN, 0, headers_sent=False), UsageStatus.ERROR, 502, PARTIAL, "broken",
     (502, "The upstream connection failed.")),
    (facts(relay.BROKEN, 200), UsageStatus.ERROR, 200, PARTIAL, "broken", "end"),
])
def test_classify(case, status, http_status, usage, metric, answer):
    outcome = classify(case)
    assert (outcome.status, outcome.http_status, outcome.usage, outcome.metric, outcome.answer) == (
        status, http_status, usage, metric, answer)


def test_classify_names_the_error():
    assert classify(facts(relay.BROKEN, 0, headers_sent=False, transfer_error="reset by peer")).error == (
        "reset by peer")
    assert classify(facts(relay.TIMEOUT, 0, headers_sent=False)).error == "timeout"
    assert classify(facts(status=500)).error == "upstream answered 500"
    assert classify(facts(relay.CANCELLED, interrupted=True)).error == "shutdown"


def test_whole_answer_sent():
    assert whole_answer_sent(200, True, True, False, "")
    assert whole_answer_sent(200, True, False, True, "")
    assert not whole_answer_sent(200, False, True, True, "")  # not a scanned stream
    assert not whole_answer_sent(200, True, False, False, "")  # no final usage, no end marker
    assert not whole_answer_sent(200, True, True, True, "error")
    assert not whole_answer_sent(500, True, True, True, "")


# -- record -------------------------------------------------------------------


def call_state(model="gpt-4o-mini", route_path="/v1/chat/completions", first_byte_after=0.25):
    route, _ = OPENAI.match(route_path, "POST")
    exchange = Exchange(request_id="req_1", route=route, path=route_path, model=model, stream=True)
    return CallState("req_1", OPENAI, KeyEntry(7, 3, None, False), AgentEntry(3, "bot", frozenset(), Decimal(1)),
                     exchange, datetime.datetime(2026, 12, 2, 8, 0), 100.0, Balances().of(3),
                     first_byte_at=None if first_byte_after is None else 100.0 + first_byte_after)


def test_build_record_prices_and_observes():
    book = PriceBook(defaults={"openai": {"gpt-4o-mini": Price.of(input="0.15", output="0.60")}},
                     fallbacks={"openai": Price.of(input="5", output="20")})
    usage = Usage(input_tokens=1000, output_tokens=500, reasoning_tokens=100)
    record, observations = build_record(call_state(), UsageStatus.COMPLETED, 200, usage, book, 101.5,
                                        upstream_request_id="up_1")
    assert record["credits"] == Decimal("0.00045")
    assert record["status"] == "completed" and type(record["status"]) is str
    assert (record["agent_id"], record["key_id"], record["route"], record["model"]) == (
        3, 7, "chat.completions", "gpt-4o-mini")
    assert record["duration_ms"] == 1500 and record["ttfb_ms"] == 250
    assert record["fallback_price"] is False and record["upstream_request_id"] == "up_1"
    assert (metrics.REQUESTS, ("openai", "chat.completions", "2xx"), 1) in observations
    assert (metrics.REQUEST_DURATION, ("openai", "chat.completions"), 1.5) in observations
    assert (metrics.TIME_TO_FIRST_BYTE, ("openai", "chat.completions"), 0.25) in observations
    assert (metrics.TOKENS, ("openai", "gpt-4o-mini", "reasoning"), 100) in observations
    assert (metrics.CREDITS, ("openai", "gpt-4o-mini"), 0.00045) in observations
    assert not any(o[0] is metrics.TOKENS and o[1][2] == "cached_input" for o in observations)


def test_build_record_of_an_unpriced_model_and_a_pass_through_path():
    book = PriceBook(fallbacks={"openai": Price.of(input="5", output="20")})
    state = call_state(model="mystery", route_path="/v1/files", first_byte_after=None)
    assert state.route_name == "passthrough"
    record, observations = build_record(state, UsageStatus.ERROR, 0, Usage(input_tokens=10), book, 100.0,
                                        error="x" * 600)
    assert record["fallback_price"] is True and record["route"] == "/v1/files"
    assert record["ttfb_ms"] is None and len(record["error"]) == 500
    assert (metrics.REQUESTS, ("openai", "passthrough", "none"), 1) in observations
    assert (metrics.TOKENS, ("openai", "other", "input"), 10) in observations
    # Nothing consumed: nothing to flag.
    assert build_record(state, UsageStatus.REJECTED, 402, Usage(), book, 100.0)[0]["fallback_price"] is False


def test_metrics_observe_counts_and_times():
    before = metrics.child(metrics.REJECTED, "test-provider", "test").__dict__["_value"].get()
    metrics.observe([(metrics.REJECTED, ("test-provider", "test"), 2),
                     (metrics.REQUEST_DURATION, ("test-provider", "test"), 0.5)])
    assert metrics.child(metrics.REJECTED, "test-provider", "test").__dict__["_value"].get() == before + 2
    assert metrics.child(metrics.REQUEST_DURATION, "test-provider", "test")._sum.get() == 0.5


# -- credits ------------------------------------------------------------------


def test_balances_hold_charge_and_commit():
    balances = Balances()
    balances.set_committed(1, Decimal("1.00"))
    balance = balances.of(1)
    assert balances.of(1) is balance  # calls in flight keep theirs
    balance.hold(Decimal("0.75"))
    balance.hold(Decimal("0.50"))
    assert balances.available(1) == Decimal("-0.25")
    assert balances.holds() == {1: Decimal("1.25")}
    balance.release(Decimal("0.75"))
    balances.charge(1, Decimal("0.10"))
    assert balances.of(1).balance == Decimal("0.90") and balances.available(1) == Decimal("0.40")
    # The debit is committed and the database's balance read again: no double count.
    balances.charged_written(1, Decimal("0.10"))
    # Before the database is read again the debit is not lost either.
    assert balances.of(1).balance == Decimal("0.90") and balances.available(1) == Decimal("0.40")
    balances.set_committed(1, Decimal("0.90"))
    assert balances.of(1).balance == Decimal("0.90")
    balances.set_held_elsewhere([1, 2], {1: Decimal("0.40")})
    assert balances.available(1) == Decimal("0") and balances.available(2) == Decimal("0")
