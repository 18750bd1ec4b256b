"""Holds bound what a call can cost (issue 15, point 2), on SQLite and on
MariaDB (the `kylon` fixture): every multiplier in the body counts in the
hold, and a call whose hold the agent's balance cannot cover is refused with
402, in the provider's error shape, before anything goes upstream. Token
limits beyond what any provider accepts are a 400 in that shape."""

from decimal import Decimal

import httpx
import pytest

OPERATOR = {"openai": "sk-operator-openai-secret"}
MESSAGES = [{"role": "user", "content": "hi"}]
# The balance of the report: 34,000 times less than n=1000000 cost it.
TINY = "0.0000117"


def post(kylon, key, path, **kwargs):
    headers = {"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
    return httpx.post(kylon.url + path, headers=headers, timeout=10, **kwargs)


def assert_refused_before_upstream(kylon, agent, answer, fake, status=402):
    assert answer.status_code == status, answer.text
    assert fake.received == []
    record = kylon.usage(answer.headers["x-kylon-request-id"])
    assert record["status"] == "rejected" and record["http_status"] == status and Decimal(record["credits"]) == 0
    assert kylon.balance(agent["id"]) == Decimal(TINY if status == 402 else "100")


def test_a_million_images_are_402_and_nothing_goes_upstream(kylon, fake_openai):
    agent, key = kylon.agent_with_key(TINY)
    fake_openai.reset()
    answer = post(kylon, key, "/proxy/openai/v1/images/generations",
                  json={"model": "dall-e-2", "prompt": "a fox", "n": 1_000_000})
    assert_refused_before_upstream(kylon, agent, answer, fake_openai)
    # dall-e-2 is 0.02 an image: the hold is what a million of them cost.
    assert answer.json()["error"]["message"] == (
        "Agent balance too low: this call may cost up to 20000 credits; the agent has 0.0000117 available "
        "(its balance 0.0000117 less 0 held by its running calls). The balance does not reset: the operator "
        "adds credits.")
    assert answer.json()["error"]["code"] == "insufficient_credits"
    assert answer.json()["error"]["type"] == "insufficient_quota"


def test_an_edit_holds_the_images_its_form_asks_for(kylon, fake_openai):
    agent, key = kylon.agent_with_key(TINY)
    fake_openai.reset()
    form = {"model": "dall-e-2", "prompt": "a fox", "n": "5000"}
    answer = post(kylon, key, "/proxy/openai/v1/images/edits", data=form,
                  files={"image": ("a.png", b"\x89PNG" + b"x" * 100, "image/png")})
    assert_refused_before_upstream(kylon, agent, answer, fake_openai)
    assert "may cost up to 100 credits" in answer.json()["error"]["message"]


def test_a_small_balance_with_a_large_output_limit_is_402(kylon, fake_openai):
    agent, key = kylon.agent_with_key(TINY)
    fake_openai.reset()
    answer = post(kylon, key, "/proxy/openai/v1/chat/completions",
                  json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_completion_tokens": 100_000})
    assert_refused_before_upstream(kylon, agent, answer, fake_openai)
    # With no stated maximum the default output (4,096 tokens) is held, and must fit too.
    answer = post(kylon, key, "/proxy/openai/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES})
    assert_refused_before_upstream(kylon, agent, answer, fake_openai)


def test_a_chat_call_holds_each_of_its_n_answers(kylon, fake_openai):
    # gpt-4o-mini: 100 output tokens at 0.60 per million hold 0.00006 an answer; 50 answers do not fit.
    agent, key = kylon.agent_with_key("0.0001")
    fake_openai.reset()
    answer = post(kylon, key, "/proxy/openai/v1/chat/completions",
                  json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_completion_tokens": 100, "n": 50})
    assert answer.status_code == 402 and "may cost up to 0.003" in answer.json()["error"]["message"]
    assert fake_openai.received == []
    assert kylon.usage(answer.headers["x-kylon-request-id"])["status"] == "rejected"


def test_a_call_that_fits_goes_through(kylon, fake_openai):
    # gpt-4o-mini: 100 output tokens at 0.60 per million hold 0.00006 (+ the prompt's few tokens).
    agent, key = kylon.agent_with_key("0.0001")
    answer = post(kylon, key, "/proxy/openai/v1/chat/completions",
                  json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_completion_tokens": 100})
    assert answer.status_code == 200, answer.text
    assert kylon.usage(answer.headers["x-kylon-request-id"])["status"] == "completed"


def test_gemini_holds_every_candidate(kylon, fakes):
    fake = fakes["gemini"]
    # gemini-2.5-flash output is 2.50 per million: one candidate of 1,000 tokens holds 0.0025.
    agent, key = kylon.agent_with_key("0.01")
    url = "/proxy/gemini/v1beta/models/gemini-2.5-flash:generateContent"
    body = {"contents": [{"parts": [{"text": "Hi"}]}], "generationConfig": {"maxOutputTokens": 1000}}
    assert post(kylon, key, url, json=body).status_code == 200
    fake.reset()
    body["generationConfig"]["candidateCount"] = 8
    answer = post(kylon, key, url, json=body)
    assert answer.status_code == 402 and fake.received == []
    error = answer.json()["error"]
    assert error["status"] == "FAILED_PRECONDITION" and "may cost up to 0.02" in error["message"]


def test_elevenlabs_holds_the_texts_characters(kylon, fakes):
    fake = fakes["elevenlabs"]
    agent, key = kylon.agent_with_key("0.003", skills=["elevenlabs"])  # 10 characters at 0.0003
    fake.reset()
    answer = httpx.post(kylon.url + "/proxy/elevenlabs/v1/text-to-speech/voice1", headers={"xi-api-key": key},
                        json={"text": "x" * 11, "model_id": "eleven_multilingual_v2"}, timeout=10)
    assert answer.status_code == 402 and fake.received == []
    assert "may cost up to 0.0033 credits" in answer.json()["detail"]["message"]
    answer = httpx.post(kylon.url + "/proxy/elevenlabs/v1/text-to-speech/voice1", headers={"xi-api-key": key},
                        json={"text": "x" * 10, "model_id": "eleven_multilingual_v2"}, timeout=10)
    assert answer.status_code == 200


# -- token limits ---------------------------------------------------------------------

LIMITS = [
    ("openai", "/proxy/openai/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES},
     "max_tokens", lambda body: body["error"]["message"]),
    ("openai", "/proxy/openai/v1/responses", {"model": "gpt-4o-mini", "input": "hi"},
     "max_output_tokens", lambda body: body["error"]["message"]),
    ("anthropic", "/proxy/anthropic/v1/messages", {"model": "claude-sonnet-4-5", "messages": MESSAGES},
     "max_tokens", lambda body: body["error"]["message"]),
    ("gemini", "/proxy/gemini/v1beta/models/gemini-2.5-flash:generateContent", {"contents": []},
     "generationConfig.maxOutputTokens", lambda body: body["error"]["message"]),
    ("gemini", "/proxy/gemini/v1beta/models/gemini-2.5-flash:generateContent", {"contents": []},
     "generationConfig.candidateCount", lambda body: body["error"]["message"]),
]


@pytest.mark.parametrize("provider, path, body, field, message", LIMITS, ids=[f"{c[0]}-{c[3]}" for c in LIMITS])
@pytest.mark.parametrize("value", [10**27, 10**8 + 1, -1])
def test_token_limits_beyond_any_provider_are_400(kylon, fakes, agent_key, provider, path, body, field, message,
                                                   value):
    _, key = agent_key
    fakes[provider].reset()
    body = dict(body)
    if field.startswith("generationConfig."):
        body["generationConfig"] = {field.split(".")[1]: value}
    else:
        body[field] = value
    answer = post(kylon, key, path, json=body, headers={"x-api-key": key, "x-goog-api-key": key})
    assert answer.status_code == 400, answer.text
    assert f"'{field}' must be between" in message(answer.json())
    assert fakes[provider].received == []
