"""A key's credit limit per period, on top of its agent's balance, as the
SDKs meet it: the 402 their usual exception raises names the key's limit,
its figures and when it resets; the agent's other keys go on; an admin's
change applies to the next call; 200 calls at once stay within the limit."""

import concurrent.futures
import datetime
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors

from .test_openai_e2e import GPT_4O_MINI_CALL, MESSAGES, client

# The fake's usage at gpt-4o-mini's prices: 0.000008325 a call. With
# max_tokens=12 a call holds about 0.0000104 (its ~85 bytes as input tokens and
# 12 output tokens), more than it costs: holds bound the spend.
CALL = GPT_4O_MINI_CALL
LIMIT = Decimal("0.00003")  # three calls, and less than a fourth's hold left


def chat(kylon, key):
    return client(kylon, key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=12)


def tomorrow():
    today = datetime.datetime.now(datetime.timezone.utc).date()
    return (today + datetime.timedelta(days=1)).isoformat() + "T00:00:00Z"


def test_a_key_over_its_limit_gets_402_while_the_agents_other_key_goes_on(kylon):
    agent = kylon.create_agent("10")
    limited = kylon.create_key(agent["id"], "limited", credit_limit=str(LIMIT), limit_reset="daily")
    other = kylon.create_key(agent["id"], "other")
    for _ in range(3):
        chat(kylon, limited["key"])
    with pytest.raises(openai.APIStatusError) as raised:
        chat(kylon, limited["key"])
    error = raised.value
    assert error.status_code == 402
    body = error.response.json()["error"]
    assert body["code"] == "key_limit_reached" and body["type"] == "insufficient_quota"
    message = body["message"]
    assert message.startswith("Key credit limit reached: this call may cost up to 0.0000")
    left = LIMIT - 3 * CALL
    assert (f"; the key has {left.normalize():f} left of its limit of 0.00003 credits a day "
            f"(spent {(3 * CALL).normalize():f} this period, 0 held by its running calls). "
            f"It resets at {tomorrow()}.") in message
    # The refused call is recorded, costs nothing, went nowhere.
    record = kylon.usage(error.response.headers["x-kylon-request-id"])
    assert record["status"] == "rejected" and record["http_status"] == 402 and Decimal(record["credits"]) == 0
    # The agent's other key, and its balance, are untouched by the key's limit.
    assert chat(kylon, other["key"]).choices[0].message.content
    kylon.usage_for_agent(agent["id"], 5)
    assert kylon.balance(agent["id"]) == Decimal("10") - 4 * CALL


def test_an_admins_change_of_the_limit_applies_to_the_next_call(kylon):
    agent = kylon.create_agent("10")
    key = kylon.create_key(agent["id"], credit_limit=str(LIMIT), limit_reset="daily")
    for _ in range(3):
        chat(kylon, key["key"])
    with pytest.raises(openai.APIStatusError):
        chat(kylon, key["key"])
    assert kylon.admin("PATCH", f"/keys/{key['id']}", json={"credit_limit": "0.0001"}).status_code == 200
    chat(kylon, key["key"])
    # A limit of 0: refused before the body is read, with the figures still.
    assert kylon.admin("PATCH", f"/keys/{key['id']}", json={"credit_limit": "0"}).status_code == 200
    with pytest.raises(openai.APIStatusError) as raised:
        chat(kylon, key["key"])
    body = raised.value.response.json()["error"]
    assert raised.value.status_code == 402 and body["code"] == "key_limit_reached"
    assert body["message"] == (f"Key credit limit reached: the key has 0 left of its limit of 0 credits a day "
                               f"(spent {(4 * CALL).normalize():f} this period, 0 held by its running calls). "
                               f"It resets at {tomorrow()}.")
    # A limit that never resets says so; no limit at all lets the key go on.
    kylon.admin("PATCH", f"/keys/{key['id']}", json={"limit_reset": "none"}).raise_for_status()
    with pytest.raises(openai.APIStatusError) as raised:
        chat(kylon, key["key"])
    assert raised.value.response.json()["error"]["message"].endswith("credits in all (spent "
                                                                     f"{(4 * CALL).normalize():f} this period, 0 held "
                                                                     "by its running calls). It does not reset.")
    kylon.admin("PATCH", f"/keys/{key['id']}", json={"credit_limit": None}).raise_for_status()
    chat(kylon, key["key"])


def test_the_agents_balance_is_named_when_it_runs_out(kylon):
    agent = kylon.create_agent("0.000015")  # one call's hold, not two
    key = kylon.create_key(agent["id"], credit_limit="5", limit_reset="monthly")
    chat(kylon, key["key"])
    with pytest.raises(openai.APIStatusError) as raised:
        chat(kylon, key["key"])
    body = raised.value.response.json()["error"]
    assert raised.value.status_code == 402 and body["code"] == "insufficient_credits"
    assert body["message"].startswith("Agent balance too low: this call may cost up to 0.0000")
    assert f"the agent has {(Decimal('0.000015') - CALL).normalize():f} available" in body["message"]


def test_anthropic_and_gemini_sdks_raise_their_402_with_the_code(kylon):
    agent = kylon.create_agent("10")
    key = kylon.create_key(agent["id"], credit_limit="0", limit_reset="weekly")["key"]
    claude = anthropic.Anthropic(base_url=kylon.url + "/proxy/anthropic", api_key=key, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as raised:
        claude.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MESSAGES)
    assert raised.value.status_code == 402
    error = raised.value.response.json()["error"]
    assert error["type"] == "billing_error" and error["code"] == "key_limit_reached"
    assert "of its limit of 0 credits a week" in error["message"] and "It resets at " in error["message"]

    gemini = genai.Client(api_key=key, http_options={"base_url": kylon.url + "/proxy/gemini"})
    with pytest.raises(genai_errors.ClientError) as raised:
        gemini.models.generate_content(model="gemini-2.5-flash", contents="Hi")
    assert raised.value.code == 402
    assert raised.value.details["error"]["details"][0]["reason"] == "key_limit_reached"
    assert "Key credit limit reached" in raised.value.message


# 200 calls at once at a key whose limit covers a few of them: holds are taken
# at admission, on the IOLoop, before anything goes upstream, so in one process
# the calls running together never hold more than what the key has left, and
# a call never costs more than its hold here: the key's spend never passes its
# limit (overshoot 0). The one thing that could add to it is what a call costs
# beyond its hold (README, "Holds").
PARALLEL_LIMIT = Decimal("0.0005")  # ~48 holds, ~60 calls


def fire(kylon, key, count, headers=None):
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    with httpx.Client(base_url=kylon.url, limits=limits, timeout=30) as http:
        def call(_):
            r = http.post("/proxy/openai/v1/chat/completions",
                          headers={"Authorization": f"Bearer {key}", **(headers or {})},
                          json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 12})
            return r.status_code, r.json()

        with concurrent.futures.ThreadPoolExecutor(200) as pool:
            return list(pool.map(call, range(count)))


def test_two_hundred_parallel_calls_stay_within_the_keys_limit(kylon):
    agent = kylon.create_agent("10")
    key = kylon.create_key(agent["id"], credit_limit=str(PARALLEL_LIMIT), limit_reset="daily")
    answers = fire(kylon, key["key"], 200)
    statuses = [status for status, _ in answers]
    admitted = statuses.count(200)
    assert admitted + statuses.count(402) == 200
    assert all(body["error"]["code"] == "key_limit_reached" for status, body in answers if status == 402)
    records = kylon.usage_for_agent(agent["id"], 200)
    spent = sum(Decimal(r["credits"]) for r in records)
    assert spent == admitted * CALL
    print(f"\n200 parallel calls, limit {PARALLEL_LIMIT}: {admitted} admitted, spent {spent}")
    assert spent <= PARALLEL_LIMIT
    # Holds do not refuse too eagerly: a call is refused only while what is
    # spent and held leaves less than its hold (~0.0000104), and every hold
    # became a spend of at most itself.
    assert spent >= (PARALLEL_LIMIT - Decimal("0.000011")) * CALL / Decimal("0.0000104")
