"""The Responses API's stored responses through Kylon, with the official
`openai` SDK: each response is its creating agent's alone, and a background
response is billed exactly once, from its final usage, whoever sees it end
(the agent's retrieve, a resumed stream, a cancel, or Kylon's own poller),
across restarts and across two processes on one database."""

import signal
import time
from decimal import Decimal

import httpx
import openai
import pytest

from .conftest import CREATED_SECRETS, drop_database, scratch_database_url
from .fakes import openai_fake as fake_wire
from .kylon_process import Kylon
from .test_openai_e2e import GPT_4O_MINI_CALL

# What the fake reports for a cancelled response: 9 input (3 cached), 2 output.
CANCELLED_CALL = ((9 - 3) * Decimal("0.15") + 3 * Decimal("0.075") + 2 * Decimal("0.60")) / 1_000_000
HELD = {"fake": "held"}


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def bg_kylon(request, tmp_path_factory, upstream_env):
    """A Kylon that polls background responses every 0.2 s at first."""
    url = scratch_database_url(request.param, tmp_path_factory)
    instance = Kylon(url, {**upstream_env, "KYLON_BACKGROUND_POLL_SECONDS": "0.2"}, name="bg-" + request.param)
    yield instance
    instance.stop()
    drop_database(url)


def new_agent(kylon, credits="100"):
    agent, key = kylon.agent_with_key(credits)
    CREATED_SECRETS.add(key)
    return agent, openai.OpenAI(base_url=kylon.url + "/proxy/openai/v1", api_key=key, max_retries=0)


def records(kylon, agent_id, route=None):
    data = kylon.admin("GET", "/usage", params={"agent_id": agent_id, "limit": 1000}).json()["data"]
    return [r for r in data if route is None or r["route"] == route]


def wait_records(kylon, agent_id, route, count=1, timeout=10):
    """The agent's records of a route, once the batch writer has written `count` of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = records(kylon, agent_id, route)
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} {route} records written")


def wait_for_charge(kylon, agent_id, timeout=15):
    """The agent's one `responses.background` record, once written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = records(kylon, agent_id, "responses.background")
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("no background charge recorded")


def wait_status(client, response_id, wanted="completed", timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.responses.retrieve(response_id)
        if response.status == wanted:
            return response
        time.sleep(0.05)
    raise AssertionError(f"response {response_id} never {wanted}")


def pending_gauge(kylon):
    text = httpx.get(kylon.url + "/metrics").text
    return float(text.split("\nkylon_background_responses_pending ")[1].split("\n")[0])


def upstream_calls(fake, response_id, polls=False):
    """The calls on a response that reached the fake: the relayed ones (the
    SDK's), or Kylon's own polls."""
    return [r for r in fake.received if response_id in r.path
            and (r.headers.get("user-agent") == "kylon-background-poll") == polls]


def test_background_create_then_poll_to_completion_charges_once(bg_kylon, fake_openai):
    agent, client = new_agent(bg_kylon)
    raw = client.responses.with_raw_response.create(model="gpt-4o-mini", input="Hi", background=True)
    created = raw.parse()
    assert created.status == "queued" and created.usage is None
    create_record = bg_kylon.usage(raw.headers["x-kylon-request-id"])
    # Not a guess from the request's size: nothing until the response ends.
    assert Decimal(create_record["credits"]) == 0 and create_record["estimated"] is False
    assert create_record["route"] == "responses" and create_record["input_tokens"] == 0

    done = wait_status(client, created.id)
    assert done.usage.output_tokens == fake_wire.COMPLETION_TOKENS
    (charge,) = wait_for_charge(bg_kylon, agent["id"])
    assert Decimal(charge["credits"]) == GPT_4O_MINI_CALL and charge["status"] == "completed"
    assert charge["input_tokens"] == fake_wire.PROMPT_TOKENS and charge["output_tokens"] == fake_wire.COMPLETION_TOKENS
    assert charge["upstream_request_id"] == created.id and charge["estimated"] is False
    # Polls are free calls of their own.
    retrieves = wait_records(bg_kylon, agent["id"], "responses.retrieve")
    assert retrieves and all(Decimal(r["credits"]) == 0 for r in retrieves)
    # More retrieves, and Kylon's own poller, charge nothing more.
    client.responses.retrieve(created.id)
    time.sleep(1.0)
    assert len(records(bg_kylon, agent["id"], "responses.background")) == 1
    assert bg_kylon.balance(agent["id"]) == Decimal("100") - GPT_4O_MINI_CALL


def test_a_background_response_never_polled_is_polled_by_kylon_and_charged_once(bg_kylon, fake_openai):
    agent, client = new_agent(bg_kylon)
    created = client.responses.create(model="gpt-4o-mini", input="Hi", background=True)
    (charge,) = wait_for_charge(bg_kylon, agent["id"])
    assert Decimal(charge["credits"]) == GPT_4O_MINI_CALL
    polls = upstream_calls(fake_openai, created.id, polls=True)
    assert polls and all(r.method == "GET" for r in polls) and not upstream_calls(fake_openai, created.id)
    polls[0].assert_only_operator_credential("authorization", "Bearer sk-operator-openai-secret")
    time.sleep(1.0)
    assert len(upstream_calls(fake_openai, created.id, polls=True)) == len(polls), "no polls once it is billed"
    assert bg_kylon.balance(agent["id"]) == Decimal("100") - GPT_4O_MINI_CALL
    assert records(bg_kylon, agent["id"], "responses.retrieve") == []  # Kylon's own polls are not calls


def test_a_response_is_its_creating_agents_alone(bg_kylon, fake_openai):
    _, owner = new_agent(bg_kylon)
    other_agent, other = new_agent(bg_kylon)
    stored = owner.responses.create(model="gpt-4o-mini", input="Hi")
    background = owner.responses.create(model="gpt-4o-mini", input="Hi", background=True, metadata=HELD)
    try:
        for response_id in (stored.id, background.id, "resp_never_created_through_kylon"):
            before = len(upstream_calls(fake_openai, response_id))
            for call in (lambda: other.responses.retrieve(response_id),
                         lambda: other.responses.retrieve(response_id, stream=True, starting_after=2),
                         lambda: other.responses.cancel(response_id),
                         lambda: other.responses.delete(response_id),
                         lambda: other.responses.input_items.list(response_id)):
                with pytest.raises(openai.NotFoundError) as err:
                    call()
                assert response_id in err.value.message
            assert len(upstream_calls(fake_openai, response_id)) == before, "nothing went upstream"
        with pytest.raises(openai.NotFoundError):
            other.responses.create(model="gpt-4o-mini", input="And?", previous_response_id=stored.id)
        with pytest.raises(openai.NotFoundError):
            other.responses.input_tokens.count(model="gpt-4o-mini", input="And?", previous_response_id=stored.id)
        refused = bg_kylon.usage_for_agent(other_agent["id"], 17)
        assert len(refused) == 17 and {r["status"] for r in refused} == {"rejected"}
        assert {r["http_status"] for r in refused} == {404}
        # The owner may.
        assert owner.responses.retrieve(stored.id).output_text == "Hello from the fake upstream!"
        assert owner.responses.create(model="gpt-4o-mini", input="And?", previous_response_id=stored.id).output_text
    finally:
        fake_openai.complete(background.id)


def test_store_false_responses_are_not_bound(bg_kylon, fake_openai):
    _, client = new_agent(bg_kylon)
    unstored = client.responses.create(model="gpt-4o-mini", input="Hi", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    assert upstream_calls(fake_openai, unstored.id) == []


def test_cancel_charges_the_cancelled_responses_usage_once(bg_kylon, fake_openai):
    agent, client = new_agent(bg_kylon)
    created = client.responses.create(model="gpt-4o-mini", input="Hi", background=True, metadata=HELD)
    wait_status(client, created.id, "in_progress")
    raw = client.responses.with_raw_response.cancel(created.id)
    cancelled = raw.parse()
    assert cancelled.status == "cancelled"
    assert Decimal(bg_kylon.usage(raw.headers["x-kylon-request-id"])["credits"]) == 0
    (charge,) = wait_for_charge(bg_kylon, agent["id"])
    assert Decimal(charge["credits"]) == CANCELLED_CALL and charge["output_tokens"] == 2
    assert charge["error"] == "response cancelled"
    time.sleep(0.8)
    assert len(records(bg_kylon, agent["id"], "responses.background")) == 1
    assert bg_kylon.balance(agent["id"]) == Decimal("100") - CANCELLED_CALL


def test_delete(bg_kylon, fake_openai):
    agent, client = new_agent(bg_kylon)
    stored = client.responses.create(model="gpt-4o-mini", input="Hi")
    assert client.responses.delete(stored.id) is None
    assert stored.id not in fake_openai.responses
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(stored.id)  # the upstream's own 404 now
    # A background response still running is not deleted (its usage would go with it).
    running = client.responses.create(model="gpt-4o-mini", input="Hi", background=True, metadata=HELD)
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.delete(running.id)
    assert "still running" in err.value.message
    assert running.id in fake_openai.responses
    assert not [r for r in upstream_calls(fake_openai, running.id) if r.method == "DELETE"]
    # Once it has ended, the delete goes: billed first.
    fake_openai.complete(running.id)
    wait_status(client, running.id)
    client.responses.delete(running.id)
    assert running.id not in fake_openai.responses
    (charge,) = wait_for_charge(bg_kylon, agent["id"])
    assert Decimal(charge["credits"]) == GPT_4O_MINI_CALL
    free = wait_records(bg_kylon, agent["id"], "responses.delete", 3)
    assert len(free) == 3 and all(Decimal(r["credits"]) == 0 for r in free)


def test_input_items_and_input_token_count_are_free(bg_kylon, fake_openai):
    agent, client = new_agent(bg_kylon)
    stored = client.responses.create(model="gpt-4o-mini", input="Say hi")
    items = client.responses.input_items.list(stored.id)
    assert items.data[0].content[0].text == "Say hi"
    count = client.responses.input_tokens.count(model="gpt-4o-mini", input="Say hi")
    assert count.input_tokens == fake_wire.PROMPT_TOKENS
    assert fake_openai.last().path == "/v1/responses/input_tokens"
    for route in ("responses.input_items", "responses.input_tokens"):
        (record,) = wait_records(bg_kylon, agent["id"], route)
        assert Decimal(record["credits"]) == 0 and record["status"] == "completed"
    assert bg_kylon.balance(agent["id"]) == Decimal("100") - GPT_4O_MINI_CALL  # the create alone


def test_compact_is_billed_from_its_usage(bg_kylon, fake_openai):
    agent, client = new_agent(bg_kylon)
    stored = client.responses.create(model="gpt-4o-mini", input="Hi")
    compacted = client.responses.compact(model="gpt-4o-mini", previous_response_id=stored.id)
    assert compacted.usage.output_tokens == fake_wire.COMPLETION_TOKENS
    (record,) = wait_records(bg_kylon, agent["id"], "responses.compact")
    assert Decimal(record["credits"]) == GPT_4O_MINI_CALL


# -- paths other than the poller: a Kylon whose first poll is a minute away ---------


@pytest.fixture(scope="module")
def slow_poller(tmp_path_factory, upstream_env):
    url = scratch_database_url("sqlite", tmp_path_factory)
    instance = Kylon(url, {**upstream_env, "KYLON_BACKGROUND_POLL_SECONDS": "60"}, name="slow-poller")
    yield instance
    instance.stop()


def test_the_agents_retrieve_bills_it(slow_poller, fake_openai):
    agent, client = new_agent(slow_poller)
    created = client.responses.create(model="gpt-4o-mini", input="Hi", background=True)
    wait_status(client, created.id)
    (charge,) = wait_for_charge(slow_poller, agent["id"], timeout=5)
    assert Decimal(charge["credits"]) == GPT_4O_MINI_CALL
    assert slow_poller.balance(agent["id"]) == Decimal("100") - GPT_4O_MINI_CALL


def test_a_resumed_stream_bills_it(slow_poller, fake_openai):
    agent, client = new_agent(slow_poller)
    with client.responses.with_streaming_response.create(
        model="gpt-4o-mini", input="Hi", background=True, stream=True, metadata=HELD
    ) as stream:
        request_id = stream.headers["x-kylon-request-id"]
        events = stream.parse()
        first = [next(events), next(events)]
    assert [e.sequence_number for e in first] == [0, 1]
    response_id = first[0].response.id
    # Left before the end: still nothing billed for it, and no estimate.
    create_record = slow_poller.usage(request_id)
    assert Decimal(create_record["credits"]) == 0 and create_record["estimated"] is False
    fake_openai.complete(response_id)
    resumed = list(client.responses.retrieve(response_id, stream=True, starting_after=1))
    assert [e.sequence_number for e in resumed] == list(range(2, 14))
    assert resumed[-1].type == "response.completed"
    assert "".join(e.delta for e in resumed if e.type == "response.output_text.delta") == "Hello from the fake upstream!"
    (charge,) = wait_for_charge(slow_poller, agent["id"], timeout=5)
    assert Decimal(charge["credits"]) == GPT_4O_MINI_CALL
    (resume,) = wait_records(slow_poller, agent["id"], "responses.retrieve")
    assert Decimal(resume["credits"]) == 0 and resume["stream"] is True
    assert slow_poller.balance(agent["id"]) == Decimal("100") - GPT_4O_MINI_CALL


def test_a_response_being_streamed_is_already_its_agents(slow_poller, fake_openai):
    _, client = new_agent(slow_poller)
    _, other = new_agent(slow_poller)
    with client.responses.with_streaming_response.create(
        model="gpt-4o-mini", input="Hi", background=True, stream=True, metadata=HELD
    ) as stream:
        events = stream.parse()
        response_id = next(events).response.id
        assert client.responses.retrieve(response_id).status in ("queued", "in_progress")
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(response_id)
        fake_openai.complete(response_id)
        assert list(events)[-1].type == "response.completed"


def test_a_background_stream_read_to_its_end_is_billed_by_the_create(slow_poller, fake_openai):
    agent, client = new_agent(slow_poller)
    events = list(client.responses.create(model="gpt-4o-mini", input="Hi", background=True, stream=True))
    assert events[-1].type == "response.completed"
    client.responses.retrieve(events[0].response.id)
    (create,) = slow_poller.usage_for_agent(agent["id"], 2)[-1:]
    assert create["route"] == "responses" and Decimal(create["credits"]) == GPT_4O_MINI_CALL
    time.sleep(0.5)
    assert records(slow_poller, agent["id"], "responses.background") == []
    assert slow_poller.balance(agent["id"]) == Decimal("100") - GPT_4O_MINI_CALL


def test_a_pending_response_keeps_its_hold_until_it_is_billed(slow_poller, fake_openai):
    """While a background response runs, what it may cost stays held: an agent
    cannot start more of them than its balance covers."""
    agent, client = new_agent(slow_poller, credits="0.004")  # one gpt-4o-mini hold (about 0.0025)
    running = client.responses.create(model="gpt-4o-mini", input="Hi", background=True, metadata=HELD)
    with pytest.raises(openai.APIStatusError) as err:
        client.responses.create(model="gpt-4o-mini", input="Hi", background=True)
    assert err.value.status_code == 402
    fake_openai.complete(running.id)
    wait_status(client, running.id)
    wait_for_charge(slow_poller, agent["id"], timeout=5)
    assert client.responses.create(model="gpt-4o-mini", input="Hi", background=True, metadata=HELD).status == "queued"


# -- restarts, and two processes on one database ----------------------------------------


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_restarted_kylon_still_charges_a_pending_response_once(how, make_kylon, fake_openai):
    k = make_kylon({"KYLON_BACKGROUND_POLL_SECONDS": "0.2"})
    agent, client = new_agent(k)
    created = client.responses.create(model="gpt-4o-mini", input="Hi", background=True, metadata=HELD)
    time.sleep(0.5)  # the binding's batch is written
    k.stop(how)
    fake_openai.complete(created.id)
    k.start()
    (charge,) = wait_for_charge(k, agent["id"])
    assert Decimal(charge["credits"]) == GPT_4O_MINI_CALL
    k.stop()
    k.start()
    time.sleep(1.0)
    assert len(records(k, agent["id"], "responses.background")) == 1
    assert k.balance(agent["id"]) == Decimal("100") - GPT_4O_MINI_CALL


@pytest.fixture(params=["sqlite", "mariadb"])
def shared_database(request, tmp_path_factory):
    url = scratch_database_url(request.param, tmp_path_factory)
    yield url
    drop_database(url)


def test_two_processes_polling_one_response_charge_it_once(shared_database, make_kylon, fake_openai):
    url = shared_database
    env = {"KYLON_BACKGROUND_POLL_SECONDS": "0.1"}
    first, second = make_kylon(env, database_url=url), make_kylon(env, database_url=url)
    agent, client = new_agent(first)
    created = client.responses.create(model="gpt-4o-mini", input="Hi", background=True, metadata=HELD)
    # The second process reads the pending rows every 15 polls' time (1.5 s
    # here): then both poll it.
    for kylon in (first, second):
        deadline = time.monotonic() + 10
        while pending_gauge(kylon) != 1:
            assert time.monotonic() < deadline, "the process never took the pending response up"
            time.sleep(0.1)
    fake_openai.complete(created.id)
    (charge,) = wait_for_charge(first, agent["id"])
    time.sleep(1.0)
    assert len(records(second, agent["id"], "responses.background")) == 1
    assert Decimal(charge["credits"]) == GPT_4O_MINI_CALL
    assert first.balance(agent["id"]) == Decimal("100") - GPT_4O_MINI_CALL


def test_a_stored_response_is_retrieved_cancelled_and_listed_under_an_allow_list(bg_kylon, fake_openai):
    """A key limited to some models reaches its own stored response's calls,
    which name no model: the allow-list met the create."""
    agent = bg_kylon.create_agent("100")
    key = bg_kylon.create_key(agent["id"], allowed_models=["gpt-4o-mini*"])["key"]
    CREATED_SECRETS.add(key)
    client = openai.OpenAI(base_url=bg_kylon.url + "/proxy/openai/v1", api_key=key, max_retries=0)
    created = client.responses.create(model="gpt-4o-mini", input="Hi", background=True, metadata=HELD)
    assert client.responses.retrieve(created.id).id == created.id
    assert client.responses.input_items.list(created.id).data is not None
    assert client.responses.cancel(created.id).status == "cancelled"
    with pytest.raises(openai.PermissionDeniedError):
        client.responses.create(model="gpt-4o", input="Hi")
