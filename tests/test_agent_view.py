"""The agent's own view, GET /proxy/kylon/v1/key with its own Kylon key: its
balance and holds, the key's limit, spend this period and reset, rate limits
and allowed models; no admin token, nothing about other agents, not billed."""

import datetime
import time
from decimal import Decimal

import httpx
import openai

from .kylon_process import ADMIN_TOKEN
from .test_key_limits import CALL, chat, tomorrow
from .test_multiprocess import finish_held_streams
from .test_openai_e2e import MESSAGES, client

VIEW = "/proxy/kylon/v1/key"


def view(kylon, key, header="authorization"):
    value = f"Bearer {key}" if header == "authorization" else key
    return httpx.get(kylon.url + VIEW, headers={header: value} if key else {}, timeout=10)


def today():
    return datetime.datetime.now(datetime.timezone.utc).date().isoformat() + "T00:00:00Z"


def test_the_figures_right_after_calls(kylon):
    agent = kylon.create_agent("10", skills=["chat", "images"])
    kylon.admin("PATCH", f"/agents/{agent['id']}", json={"allowed_models": ["gpt-4o*"], "rpm_limit": 100,
                                                         "concurrency_limit": 4}).raise_for_status()
    key = kylon.create_key(agent["id"], "worker", credit_limit="0.001", limit_reset="daily", tpm_limit=5000,
                           allowed_models=["gpt-4o-mini"])
    for _ in range(2):
        chat(kylon, key["key"])
    answer = view(kylon, key["key"])
    assert answer.status_code == 200, answer.text
    shown = answer.json()
    balance = f"{Decimal('10') - 2 * CALL:.9f}"
    agent_rates, key_rates = shown["agent"]["rate_limits"], shown["key"]["rate_limits"]
    assert {k: v for k, v in shown["agent"].items() if k != "rate_limits"} == {
        "id": agent["id"], "name": agent["name"], "balance": balance, "held": "0.000000000", "available": balance,
        "skills": ["chat", "images"], "allowed_models": ["gpt-4o*"],
    }
    # What is left of each limit this minute, and when it resets.
    assert agent_rates["rpm"]["limit"] == 100 and agent_rates["rpm"]["remaining"] == 98
    assert 0 < agent_rates["rpm"]["resets_in_seconds"] <= 60 and agent_rates["rpm"]["resets_at"].endswith(":00Z")
    assert agent_rates["concurrency"] == {"limit": 4, "running": 0, "remaining": 4}
    assert agent_rates["tpm"] is None and key_rates["rpm"] is None and key_rates["concurrency"] is None
    assert key_rates["tpm"]["limit"] == 5000 and key_rates["tpm"]["remaining"] < 5000
    assert {k: v for k, v in shown["key"].items() if k != "rate_limits"} == {
        "id": key["id"], "name": "worker", "prefix": key["key"][:12], "expires_at": None,
        "credit_limit": "0.001000000", "limit_reset": "daily", "spent_this_period": f"{2 * CALL:.9f}",
        "held": "0.000000000", "remaining": f"{Decimal('0.001') - 2 * CALL:.9f}",
        "period_start": today(), "resets_at": tomorrow(), "allowed_models": ["gpt-4o-mini"],
    }
    # The same through x-api-key, and through the openai SDK's low-level get.
    def steady(view):  # the seconds to the reset move on between reads
        for side in ("agent", "key"):
            for limit in view[side]["rate_limits"].values():
                if limit is not None:
                    limit.pop("resets_in_seconds", None)
                    limit.pop("resets_at", None)
        return view
    assert steady(view(kylon, key["key"], "x-api-key").json()) == steady(shown)
    sdk = openai.OpenAI(base_url=kylon.url + "/proxy/kylon/v1", api_key=key["key"], max_retries=0)
    assert steady(sdk.get("/key", cast_to=object)) == shown
    # Free: no usage record, nothing billed.
    time.sleep(0.3)
    assert len(kylon.admin("GET", "/usage", params={"agent_id": agent["id"]}).json()["data"]) == 2
    assert kylon.balance(agent["id"]) == Decimal("10") - 2 * CALL


def test_calls_in_flight_show_as_held(kylon, fake_openai):
    agent = kylon.create_agent("5")
    key = kylon.create_key(agent["id"], credit_limit="2", limit_reset="monthly")["key"]
    fake_openai.release.clear()
    try:
        # held-stream has no price (here: the dearest model's), the session's other tests count on that.
        response = client(kylon, key).chat.completions.with_streaming_response.create(
            model="held-stream", messages=MESSAGES, stream=True, max_completion_tokens=100).__enter__()
        next(iter(response.parse()))
        streams = [response]
        shown = view(kylon, key).json()
        held = Decimal(shown["agent"]["held"])
        assert 0 < held < 1 and Decimal(shown["key"]["held"]) == held
        assert Decimal(shown["agent"]["available"]) == Decimal("5") - held
        assert Decimal(shown["key"]["remaining"]) == Decimal("2") - held
        assert shown["key"]["resets_at"].endswith("-01T00:00:00Z")
        finish_held_streams(streams, fake_openai)
    finally:
        fake_openai.release.set()
    assert view(kylon, key).json()["key"]["held"] == "0.000000000"


def test_a_key_without_a_limit_shows_its_spend(kylon):
    agent = kylon.create_agent("10")
    key = kylon.create_key(agent["id"])
    chat(kylon, key["key"])
    kylon.usage_for_agent(agent["id"], 1)
    shown = view(kylon, key["key"]).json()["key"]
    assert shown["credit_limit"] is None and shown["limit_reset"] == "none"
    assert shown["spent_this_period"] == f"{CALL:.9f}"
    assert shown["held"] is None and shown["remaining"] is None
    assert shown["period_start"] is None and shown["resets_at"] is None


def test_each_agent_sees_only_itself(kylon):
    first = kylon.create_agent("10")
    second = kylon.create_agent("3")
    kylon.create_key(first["id"], "first's key")
    key = kylon.create_key(second["id"], "second's key")
    answer = view(kylon, key["key"])
    assert answer.json()["agent"]["id"] == second["id"] and answer.json()["key"]["id"] == key["id"]
    assert first["name"] not in answer.text and "first's key" not in answer.text
    assert set(answer.json()) == {"agent", "key"}


def test_bad_keys_get_a_clear_401(kylon):
    for problem, message in [("unknown", "Invalid Kylon API key."), ("missing", "Missing Kylon API key."),
                             ("revoked", "This Kylon API key has been revoked."),
                             ("expired", "This Kylon API key has expired.")]:
        answer = view(kylon, kylon.bad_key(problem))
        assert answer.status_code == 401, answer.text
        assert answer.json() == {"error": {"message": message, "type": "invalid_request_error", "param": None,
                                           "code": "invalid_api_key"}}
    # The admin token is not an agent's key.
    assert view(kylon, ADMIN_TOKEN).status_code == 401
    # The SDK raises its usual exception.
    sdk = openai.OpenAI(base_url=kylon.url + "/proxy/kylon/v1", api_key="pak_" + "x" * 43, max_retries=0)
    try:
        sdk.get("/key", cast_to=object)
        raise AssertionError("no 401")
    except openai.AuthenticationError as e:
        assert e.status_code == 401 and e.body["code"] == "invalid_api_key"
