"""Claude on Vertex AI through Kylon: the plain `anthropic` SDK talks to
/proxy/anthropic-vertex as to Anthropic; Kylon moves the model into the Vertex
URL, sets the Vertex API version, and authenticates with access tokens minted
from a real service-account key file (google-auth) at the fake's token
endpoint, or with a static token."""

import json
import socket
import time
from decimal import Decimal

import anthropic
import httpx
import pytest

from .fakes import anthropic_fake as wire
from .fakes import vertex_fake

MESSAGES = [{"role": "user", "content": "Say hi"}]
TEXT = "Hello from the fake upstream!"
MODEL = "claude-sonnet-4-5@20250929"
MODELS_PATH = (
    f"/v1/projects/{vertex_fake.PROJECT}/locations/{vertex_fake.REGION}/publishers/anthropic/models"
)
ALL_INPUT = wire.INPUT_TOKENS + wire.CACHE_WRITE_TOKENS + wire.CACHE_READ_TOKENS
# claude-sonnet-4-5 (Vertex's @-dated id is priced as the model): 3, 3.75, 0.30, 15 per 1M tokens.
SONNET_4_5_CALL = (
    wire.INPUT_TOKENS * Decimal("3")
    + wire.CACHE_WRITE_TOKENS * Decimal("3.75")
    + wire.CACHE_READ_TOKENS * Decimal("0.30")
    + wire.OUTPUT_TOKENS * Decimal("15")
) / 1_000_000


@pytest.fixture(scope="session")
def fake_vertex(fakes):
    return fakes["vertex"]


def client(kylon, key):
    return anthropic.Anthropic(base_url=kylon.url + "/proxy/anthropic-vertex", api_key=key, max_retries=0)


def create(kylon, key, model=MODEL, **kwargs):
    return client(kylon, key).messages.with_raw_response.create(
        model=model, max_tokens=256, messages=MESSAGES, **kwargs
    )


def predictions(fake):
    """The Vertex calls the fake received (token grants left out)."""
    return [r for r in fake.received if r.path != "/token"]


def bearer(received):
    scheme, _, token = received.headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    return token


def assert_vertex_call(fake, received, key, method="rawPredict", model=MODEL, account="default"):
    assert received.method == "POST" and received.path == f"{MODELS_PATH}/{model}:{method}"
    assert received.query == ""
    token = bearer(received)
    assert fake.issued[token][0] == account  # minted by the token endpoint for that service account
    body = json.loads(received.body)
    assert "model" not in body and body["anthropic_version"] == "vertex-2023-10-16"
    assert "anthropic-version" not in received.headers and "x-api-key" not in received.headers
    assert key not in received.everything()
    return token


# -- messages -------------------------------------------------------------------


def test_message(kylon, fake_vertex, agent_key):
    agent, key = agent_key
    raw = create(kylon, key)
    assert raw.parse().content[0].text == TEXT
    assert_vertex_call(fake_vertex, predictions(fake_vertex)[-1], key)
    record = kylon.usage(raw.headers["x-kylon-request-id"])
    assert record["provider"] == "anthropic-vertex" and record["route"] == "messages"
    assert record["model"] == MODEL and record["status"] == "completed" and record["stream"] is False
    assert record["input_tokens"] == ALL_INPUT and record["cached_input_tokens"] == wire.CACHE_READ_TOKENS
    assert record["cache_write_tokens"] == wire.CACHE_WRITE_TOKENS
    assert record["output_tokens"] == wire.OUTPUT_TOKENS
    assert record["estimated"] is False and record["fallback_price"] is False
    assert Decimal(record["credits"]) == SONNET_4_5_CALL
    assert kylon.balance(agent["id"]) == Decimal("100") - SONNET_4_5_CALL


def test_stream(kylon, fake_vertex, agent_key):
    agent, key = agent_key
    with client(kylon, key).messages.with_streaming_response.create(
        model=MODEL, max_tokens=256, messages=MESSAGES, stream=True
    ) as response:
        request_id = response.headers["x-kylon-request-id"]
        events = list(response.parse())
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == TEXT
    received = predictions(fake_vertex)[-1]
    assert_vertex_call(fake_vertex, received, key, method="streamRawPredict")
    assert json.loads(received.body)["stream"] is True
    record = kylon.usage(request_id)
    assert record["stream"] is True and record["status"] == "completed" and record["estimated"] is False
    assert record["input_tokens"] == ALL_INPUT and record["output_tokens"] == wire.OUTPUT_TOKENS
    assert Decimal(record["credits"]) == SONNET_4_5_CALL
    assert kylon.balance(agent["id"]) == Decimal("100") - SONNET_4_5_CALL


def test_token_is_reused_until_near_expiry(kylon, fake_vertex, agent_key):
    _, key = agent_key
    create(kylon, key)
    grants = fake_vertex.grants_for("default")
    first = bearer(predictions(fake_vertex)[-1])
    create(kylon, key)
    assert bearer(predictions(fake_vertex)[-1]) == first
    assert fake_vertex.grants_for("default") == grants


def test_beta_call_drops_the_query(kylon, fake_vertex, agent_key):
    _, key = agent_key
    r = httpx.post(kylon.url + "/proxy/anthropic-vertex/v1/messages?beta=true",
                   headers={"x-api-key": key, "anthropic-beta": "context-management-2025-06-27"},
                   json={"model": MODEL, "max_tokens": 256, "messages": MESSAGES})
    assert r.status_code == 200 and r.json()["content"][0]["text"] == TEXT
    received = predictions(fake_vertex)[-1]
    assert_vertex_call(fake_vertex, received, key)
    assert received.headers["anthropic-beta"] == "context-management-2025-06-27"


def test_count_tokens_is_free(kylon, fake_vertex, agent_key):
    agent, key = agent_key
    raw = client(kylon, key).messages.with_raw_response.count_tokens(model=MODEL, messages=MESSAGES)
    assert raw.parse().input_tokens == wire.COUNTED_TOKENS
    received = predictions(fake_vertex)[-1]
    assert received.path == f"{MODELS_PATH}/count-tokens:rawPredict"
    body = json.loads(received.body)
    assert body["model"] == MODEL and body["anthropic_version"] == "vertex-2023-10-16"
    assert key not in received.everything()
    record = kylon.usage(raw.headers["x-kylon-request-id"])
    assert record["route"] == "messages.count_tokens" and Decimal(record["credits"]) == 0
    assert kylon.balance(agent["id"]) == Decimal("100")


def test_disconnect_mid_stream_stops_the_upstream(kylon, fake_vertex, agent_key):
    agent, key = agent_key
    with client(kylon, key).messages.with_streaming_response.create(
        model="silent-stream", max_tokens=256, messages=MESSAGES, stream=True
    ) as response:
        request_id = response.headers["x-kylon-request-id"]
        events = iter(response.parse())
        while next(events).type != "content_block_delta":
            pass
        received = predictions(fake_vertex)[-1]
        left_at = time.monotonic()
        response.close()
    assert received.path == f"{MODELS_PATH}/silent-stream:streamRawPredict"
    closed_at = fake_vertex.wait_closed(received, timeout=5)
    assert closed_at is not None and closed_at - left_at < 1.5
    record = kylon.usage(request_id)
    assert record["status"] == "disconnected" and record["estimated"] is True
    assert record["input_tokens"] == ALL_INPUT and record["output_tokens"] == 1
    assert Decimal(record["credits"]) > 0
    assert kylon.balance(agent["id"]) == Decimal("100") - Decimal(record["credits"])


@pytest.mark.parametrize(
    "model, status, exception",
    [("error-429", 429, anthropic.RateLimitError), ("error-529", 529, anthropic.OverloadedError)],
)
def test_upstream_errors_pass_through(kylon, agent_key, model, status, exception):
    agent, key = agent_key
    with pytest.raises(exception) as err:
        create(kylon, key, model=model)
    assert err.value.status_code == status
    record = kylon.usage(err.value.response.headers["x-kylon-request-id"])
    assert record["status"] == "upstream_error" and record["http_status"] == status
    assert kylon.balance(agent["id"]) == Decimal("100")


@pytest.mark.parametrize("model", ["../../../v1/other", "claude:rawPredict?x=", ""])
def test_a_model_that_would_reshape_the_url_is_400(kylon, fake_vertex, agent_key, model):
    _, key = agent_key
    fake_vertex.reset()
    with pytest.raises(anthropic.BadRequestError) as err:
        create(kylon, key, model=model)
    assert err.value.body["error"]["type"] == "invalid_request_error"
    assert predictions(fake_vertex) == []


def test_bad_key_is_401_in_anthropic_shape(kylon, fake_vertex):
    fake_vertex.reset()
    with pytest.raises(anthropic.AuthenticationError) as err:
        create(kylon, "pak_" + "y" * 43)
    assert err.value.body["error"]["type"] == "authentication_error"
    assert fake_vertex.received == []


# -- credentials ----------------------------------------------------------------------


def test_static_access_token(make_kylon, fake_vertex):
    k = make_kylon({"KYLON_VERTEX_ACCESS_TOKEN": vertex_fake.STATIC_TOKEN})
    _, key = k.agent_with_key("5")
    grants = len(fake_vertex.grants)
    assert create(k, key).parse().content[0].text == TEXT
    received = predictions(fake_vertex)[-1]
    assert received.headers["authorization"] == f"Bearer {vertex_fake.STATIC_TOKEN}"
    assert "model" not in json.loads(received.body)
    assert len(fake_vertex.grants) == grants  # no token minted
    assert vertex_fake.STATIC_TOKEN not in k.read_log()


def test_short_lived_tokens_are_refreshed(make_kylon, fake_vertex):
    """Tokens living 2 s are inside the must-refresh margin: each call gets a new one."""
    k = make_kylon({"GOOGLE_APPLICATION_CREDENTIALS": fake_vertex.credentials_file("short")})
    _, key = k.agent_with_key("5")
    tokens = []
    for _ in range(2):
        create(k, key)
        tokens.append(assert_vertex_call(fake_vertex, predictions(fake_vertex)[-1], key, account="short"))
    assert tokens[0] != tokens[1]
    assert fake_vertex.grants_for("short") == 2


def test_refresh_ahead_of_expiry_does_not_hold_calls(make_kylon, fake_vertex):
    """A 120 s token is inside the refresh-ahead window: the next call goes on with
    it while a new token is minted in the background, and later calls use the new one."""
    k = make_kylon({"GOOGLE_APPLICATION_CREDENTIALS": fake_vertex.credentials_file("ahead")})
    _, key = k.agent_with_key("5")
    create(k, key)
    first = assert_vertex_call(fake_vertex, predictions(fake_vertex)[-1], key, account="ahead")
    assert fake_vertex.grants_for("ahead") == 1
    create(k, key)
    assert bearer(predictions(fake_vertex)[-1]) == first
    deadline = time.monotonic() + 5
    while fake_vertex.grants_for("ahead") < 2:
        assert time.monotonic() < deadline, "no background refresh"
        time.sleep(0.02)
    time.sleep(0.1)  # the minted token reaches the provider
    create(k, key)
    latest = assert_vertex_call(fake_vertex, predictions(fake_vertex)[-1], key, account="ahead")
    assert latest != first


def test_token_endpoint_down_is_502(make_kylon, fake_vertex, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with open(fake_vertex.credentials_file("default")) as f:
        info = json.load(f)
    info["token_uri"] = f"http://127.0.0.1:{closed_port}/token"
    path = tmp_path / "unreachable.json"
    path.write_text(json.dumps(info))
    k = make_kylon({"GOOGLE_APPLICATION_CREDENTIALS": str(path)})
    _, key = k.agent_with_key("5")
    fake_vertex.reset()
    with pytest.raises(anthropic.APIStatusError) as err:
        create(k, key)
    assert err.value.status_code == 502 and err.value.body["type"] == "error"
    assert "access token" in err.value.body["error"]["message"]
    assert predictions(fake_vertex) == []
    record = k.usage(err.value.response.headers["x-kylon-request-id"])
    assert record["status"] == "rejected" and record["http_status"] == 502


def test_unconfigured_is_503_naming_the_variables(make_kylon):
    k = make_kylon({"KYLON_VERTEX_PROJECT": "", "GOOGLE_APPLICATION_CREDENTIALS": ""})
    _, key = k.agent_with_key("5")
    with pytest.raises(anthropic.ServiceUnavailableError) as err:
        create(k, key)
    message = err.value.body["error"]["message"]
    assert "KYLON_VERTEX_PROJECT" in message and "GOOGLE_APPLICATION_CREDENTIALS" in message
    assert "KYLON_VERTEX_ACCESS_TOKEN" in message
