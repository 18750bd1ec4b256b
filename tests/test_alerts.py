"""Alerts to webhooks (docs/controls.md, "Alerts"): a local receiver checks
every delivery's signature (with the check the docs give receivers); calls through the openai SDK against the fake
drain balances and spend key limits. Each crossing is delivered once (also
from two processes on one MariaDB), failed deliveries are retried with
backoff, and every attempt is recorded."""

import asyncio
import datetime
import json
import os
import threading
import time
import uuid
from decimal import Decimal

import openai
import pytest
import tornado.web

from .conftest import CREATED_SECRETS, drop_database, scratch_database_url
from .fakes.server import FakeServer, RecordingHandler, free_port
from .kylon_process import ROOT, Kylon

# Short intervals so the tests run fast: the watcher and the sender look
# every 0.2 s, the first retry waits 0.3 s (then 1.8 s: BACKOFF), 3 attempts at most.
ALERT_ENV = {
    "KYLON_ALERT_CHECK_SECONDS": "0.2",
    "KYLON_WEBHOOK_RETRY_SECONDS": "0.3",
    "KYLON_WEBHOOK_MAX_ATTEMPTS": "3",
    "KYLON_WEBHOOK_TIMEOUT": "3",
}
# Billed at 1 credit per million output tokens and nothing for input: a call
# reporting N completion tokens costs exactly N / 1e6 credits.
METER_MODEL = "alert-meter"
MESSAGES = [{"role": "user", "content": "Say hi"}]


class ReceiverHandler(RecordingHandler):
    async def post(self, path):
        fake = self.fake
        await asyncio.sleep(fake.delay.get(path, 0))
        secret = fake.secrets.get(path)
        header = self.request.headers.get("X-Kylon-Signature", "")
        if not (secret and fake.verified(secret, self.request.body, header)):
            fake.bad_signatures.append(self.request.body)
            self.set_status(401)
            return
        delivery = self.request.headers["X-Kylon-Delivery"]
        with fake.lock:
            tries = fake.attempts[path, delivery] = fake.attempts.get((path, delivery), 0) + 1
            failing = tries <= fake.fail_first.get(path, 0)
            if not failing:
                body = json.loads(self.request.body)
                assert body["type"] == self.request.headers["X-Kylon-Event"]
                fake.deliveries.append({"path": path, "delivery": delivery, **body})
        self.set_status(500 if failing else 200)


def documented_check():
    """`verified(secret, body, header)`, as docs/controls.md gives it to receivers."""
    with open(os.path.join(ROOT, "docs", "controls.md"), encoding="utf-8") as f:
        code = f.read().split("```python\n")[-1].split("```")[0]
    namespace = {}
    exec(code, namespace)
    return namespace["verified"]


class Receiver(FakeServer):
    """A webhook receiver: the webhook at /<path> is signed with
    secrets[path]; the first fail_first[path] attempts of each delivery there
    answer 500, each after delay[path] seconds; each delivery that got through is in `deliveries`."""

    def __init__(self):
        self.secrets = {}
        self.fail_first = {}
        self.delay = {}  # path -> seconds before each answer
        self.attempts = {}  # (path, X-Kylon-Delivery) -> attempts seen
        self.deliveries = []
        self.bad_signatures = []
        self.lock = threading.Lock()
        self.verified = documented_check()
        super().__init__([(r"/(.*)", ReceiverHandler)])

    def webhook(self, kylon, events=None, fail_first=0, secret=None):
        """A webhook on `kylon` to a new path here; its id."""
        path = "hook-" + uuid.uuid4().hex[:8]
        self.fail_first[path] = fail_first
        body = {"url": f"{self.url}/{path}", **({"events": events} if events is not None else {}),
                **({"secret": secret} if secret else {})}
        r = kylon.admin("POST", "/webhooks", json=body)
        assert r.status_code == 201, r.text
        self.secrets[path] = r.json()["secret"]
        CREATED_SECRETS.add(r.json()["secret"])  # never in a log (conftest checks)
        return r.json()["id"], path

    def got(self, path, timeout=10, count=None, **data):
        """Deliveries that reached `path` whose data has those fields; waits
        until there are `count` of them (then a moment longer, so a second
        delivery of the same event would show)."""
        def matching():
            return [d for d in list(self.deliveries) if d["path"] == path
                    and all(d["data"].get(k) == v for k, v in data.items())]

        deadline = time.monotonic() + timeout
        while count is not None and len(matching()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.8)
        return matching()


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def alerting(request, tmp_path_factory, upstream_env):
    """A Kylon with short alert intervals, on each database kind."""
    url = scratch_database_url(request.param, tmp_path_factory)
    instance = Kylon(url, {**upstream_env, **ALERT_ENV}, name="alerts-" + request.param)
    set_meter_price(instance)
    yield instance
    instance.stop()
    drop_database(url)


@pytest.fixture(scope="module")
def hook(alerting, receiver):
    """The module's webhook (every event), on the module's Kylon."""
    webhook_id, path = receiver.webhook(alerting)
    return path


def set_meter_price(kylon):
    r = kylon.admin("PUT", "/prices", json={"provider": "openai", "model": METER_MODEL, "input": "0",
                                            "cached_input": "0", "output": "1"})
    assert r.status_code == 200, r.text


def spend(kylon, key, credits):
    """One call through the openai SDK that costs exactly `credits`; waits
    until its usage record (and debit) is written."""
    client = openai.OpenAI(base_url=kylon.url + "/proxy/openai/v1", api_key=key, max_retries=0)
    tokens = int(Decimal(credits) * 1_000_000)
    raw = client.chat.completions.with_raw_response.create(
        model=METER_MODEL, messages=MESSAGES, max_tokens=1,
        extra_headers={"x-fake-usage": json.dumps({"completion_tokens": tokens})})
    raw.parse()
    record = kylon.usage(raw.headers["x-kylon-request-id"])
    assert Decimal(record["credits"]) == Decimal(credits), record


def metric(kylon, name, **labels):
    import httpx

    text = httpx.get(kylon.url + "/metrics", timeout=10).text
    assert f"# HELP {name} " in text and f"# TYPE {name} counter" in text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.split()[-1])
    return 0.0


def agent_with_thresholds(kylon, credits, thresholds):
    agent, key = kylon.agent_with_key(credits)
    r = kylon.admin("PATCH", f"/agents/{agent['id']}", json={"alert_thresholds": thresholds})
    assert r.status_code == 200, r.text
    return agent, key


def thresholds_of(deliveries):
    return sorted(d["data"]["threshold"] for d in deliveries if d["type"] == "low_balance")


def test_low_balance_fires_once_per_threshold_crossing_and_a_grant_rearms(alerting, receiver, hook):
    fired_before = metric(alerting, "kylon_alert_events_total", kind="low_balance")
    agent, key = agent_with_thresholds(alerting, "1", "20%,5%,0")
    spend(alerting, key, "0.5")
    assert receiver.got(hook, agent_id=agent["id"]) == []

    # One big call crosses 20 % (0.2) and 5 % (0.05) of the grant of 1 at once: each fires once.
    spend(alerting, key, "0.47")
    got = receiver.got(hook, count=2, agent_id=agent["id"])
    assert thresholds_of(got) == ["20%", "5%"]
    assert {d["data"]["balance"] for d in got} == {"0.03"}
    twenty = next(d for d in got if d["data"]["threshold"] == "20%")
    assert twenty["data"]["threshold_credits"] == "0.2" and twenty["data"]["last_grant"] == "1"
    assert twenty["data"]["agent_name"] == agent["name"] and twenty["type"] == "low_balance"

    # Below zero: the last threshold; the ones already crossed do not fire again.
    spend(alerting, key, "0.05")
    got = receiver.got(hook, count=3, agent_id=agent["id"])
    assert thresholds_of(got) == ["0", "20%", "5%"]
    assert len({d["id"] for d in got}) == len({d["delivery"] for d in got}) == 3

    # A new grant re-arms: 0.98 is above every threshold, 0.18 is below 20 % of the new grant.
    r = alerting.admin("POST", f"/agents/{agent['id']}/credits", json={"amount": "1", "note": "top-up"})
    assert r.status_code == 200, r.text
    assert len(receiver.got(hook, agent_id=agent["id"])) == 3
    spend(alerting, key, "0.8")
    got = receiver.got(hook, count=4, agent_id=agent["id"])
    assert thresholds_of(got) == ["0", "20%", "20%", "5%"]
    again = [d for d in got if d["data"]["balance"] == "0.18"]
    assert len(again) == 1 and again[0]["data"]["threshold_credits"] == "0.2"
    assert not receiver.bad_signatures
    assert metric(alerting, "kylon_alert_events_total", kind="low_balance") == fired_before + 4


def test_absolute_threshold_and_no_alert_without_thresholds(alerting, receiver, hook):
    agent, key = agent_with_thresholds(alerting, "1", ["0.5"])
    quiet, quiet_key = alerting.agent_with_key("1")
    spend(alerting, quiet_key, "0.9")
    spend(alerting, key, "0.4")
    assert receiver.got(hook, agent_id=agent["id"]) == []
    spend(alerting, key, "0.1")
    [got] = receiver.got(hook, count=1, agent_id=agent["id"])
    assert got["data"]["threshold"] == "0.5" and got["data"]["balance"] == "0.5"
    assert receiver.got(hook, agent_id=quiet["id"]) == []


def test_key_limit_reached_once_a_period(alerting, receiver, hook):
    agent, _ = alerting.agent_with_key("10")
    key = alerting.create_key(agent["id"], "capped", credit_limit="0.01", limit_reset="daily")
    spend(alerting, key["key"], "0.006")
    assert receiver.got(hook, key_id=key["id"]) == []
    spend(alerting, key["key"], "0.006")
    [got] = receiver.got(hook, count=1, key_id=key["id"])
    today = datetime.datetime.now(datetime.timezone.utc).date()
    tomorrow = (today + datetime.timedelta(days=1)).isoformat() + "T00:00:00Z"
    assert got["type"] == "key_limit_reached"
    assert got["data"] == {"agent_id": agent["id"], "agent_name": agent["name"], "key_id": key["id"],
                           "key_name": "capped", "key_prefix": key["prefix"], "limit": "0.01",
                           "spent": "0.012", "limit_reset": "daily",
                           "period_start": today.isoformat() + "T00:00:00Z", "resets_at": tomorrow}
    # A raised limit is a new threshold: reaching it fires again.
    r = alerting.admin("PATCH", f"/keys/{key['id']}", json={"credit_limit": "0.015"})
    assert r.status_code == 200, r.text
    assert len(receiver.got(hook, key_id=key["id"])) == 1
    spend(alerting, key["key"], "0.004")
    got = receiver.got(hook, count=2, key_id=key["id"])
    assert sorted((d["data"]["limit"], d["data"]["spent"]) for d in got) == [("0.01", "0.012"), ("0.015", "0.016")]


def test_key_expiring_within_the_window(alerting, receiver, hook):
    agent = alerting.create_agent("1")
    soon = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=3)).replace(microsecond=0)
    later = soon + datetime.timedelta(days=30)
    expiring = alerting.create_key(agent["id"], "soon", expires_at=soon.isoformat())
    alerting.create_key(agent["id"], "later", expires_at=later.isoformat())
    revoked = alerting.create_key(agent["id"], "revoked")
    alerting.admin("DELETE", f"/keys/{revoked['id']}")
    assert alerting.admin("PATCH", f"/keys/{revoked['id']}", json={"expires_at": soon.isoformat()}).status_code == 200
    [got] = receiver.got(hook, count=1, agent_id=agent["id"])
    assert got["type"] == "key_expiring"
    assert got["data"]["key_id"] == expiring["id"] and got["data"]["key_name"] == "soon"
    assert got["data"]["expires_at"] == soon.replace(tzinfo=None).isoformat() + "Z"
    # A new expiry time is announced again.
    sooner = soon - datetime.timedelta(days=1)
    alerting.admin("PATCH", f"/keys/{expiring['id']}", json={"expires_at": sooner.isoformat()})
    got = receiver.got(hook, count=2, agent_id=agent["id"])
    assert sorted(d["data"]["expires_at"] for d in got) == [
        sooner.replace(tzinfo=None).isoformat() + "Z", soon.replace(tzinfo=None).isoformat() + "Z"]


def deliveries(kylon, webhook_id):
    r = kylon.admin("GET", f"/webhooks/{webhook_id}/deliveries")
    assert r.status_code == 200, r.text
    return r.json()["data"]


def wait_for(predicate, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("never happened")


def test_a_receiver_failing_twice_gets_three_attempts_one_delivered(alerting, receiver):
    webhook_id, path = receiver.webhook(alerting, events=["key_expiring"], fail_first=2)
    before = {o: metric(alerting, "kylon_webhook_deliveries_total", outcome=o) for o in ("retrying", "delivered")}
    r = alerting.admin("POST", f"/webhooks/{webhook_id}/test")
    assert r.status_code == 202, r.text
    delivery_id = r.json()["delivery_id"]
    [got] = receiver.got(path, count=1)
    assert got["type"] == "test" and got["delivery"] == str(delivery_id)
    assert receiver.attempts[path, str(delivery_id)] == 3
    [row] = wait_for(lambda: [d for d in deliveries(alerting, webhook_id) if d["status"] == "delivered"])
    assert row["id"] == delivery_id and row["attempts"] == 3 and row["last_status_code"] == 200
    assert row["delivered_at"] and row["next_attempt_at"] is None
    log = row["attempt_log"]
    assert [(a["number"], a["status_code"], a["error"]) for a in log] == [
        (1, 500, "HTTP 500"), (2, 500, "HTTP 500"), (3, 200, "")]
    # Backoff: 0.3 s, then 6 × 0.3 s (each attempt's time is taken after its answer).
    times = [datetime.datetime.fromisoformat(a["at"].rstrip("Z")) for a in log]
    gaps = [(later - earlier).total_seconds() for earlier, later in zip(times, times[1:])]
    assert 0.3 <= gaps[0] < 1.5 and 1.8 <= gaps[1] < 3.5, gaps
    assert metric(alerting, "kylon_webhook_deliveries_total", outcome="retrying") == before["retrying"] + 2
    assert metric(alerting, "kylon_webhook_deliveries_total", outcome="delivered") == before["delivered"] + 1
    assert alerting.admin("DELETE", f"/webhooks/{webhook_id}").status_code == 204


def test_an_unreachable_receiver_is_given_up_after_the_last_attempt(alerting):
    url = f"http://127.0.0.1:{free_port()}/nobody-listens"
    r = alerting.admin("POST", "/webhooks", json={"url": url, "events": ["key_expiring"]})
    webhook_id = r.json()["id"]
    given_up = metric(alerting, "kylon_webhook_deliveries_total", outcome="given_up")
    alerting.admin("POST", f"/webhooks/{webhook_id}/test")
    [row] = wait_for(lambda: [d for d in deliveries(alerting, webhook_id) if d["status"] == "failed"])
    assert row["attempts"] == 3 and row["last_status_code"] is None and row["delivered_at"] is None
    assert [a["status_code"] for a in row["attempt_log"]] == [None, None, None]
    assert all(a["error"] for a in row["attempt_log"]) and row["last_error"]
    assert metric(alerting, "kylon_webhook_deliveries_total", outcome="given_up") == given_up + 1
    assert alerting.admin("DELETE", f"/webhooks/{webhook_id}").status_code == 204


def test_a_webhook_deleted_while_its_delivery_is_out(alerting, receiver):
    webhook_id, path = receiver.webhook(alerting, events=["key_expiring"])
    receiver.delay[path] = 1.5
    alerting.admin("POST", f"/webhooks/{webhook_id}/test")
    wait_for(lambda: [r for r in list(receiver.received) if r.path == "/" + path])
    assert alerting.admin("DELETE", f"/webhooks/{webhook_id}").status_code == 204
    # The answer comes back to a delivery that is gone: nothing to record, no failure.
    time.sleep(2)
    other, other_path = receiver.webhook(alerting, events=["key_expiring"])
    alerting.admin("POST", f"/webhooks/{other}/test")
    assert len(receiver.got(other_path, count=1)) == 1
    assert "webhook delivery failed" not in alerting.read_log()
    assert alerting.admin("DELETE", f"/webhooks/{other}").status_code == 204


# -- several processes on one database -------------------------------------------


@pytest.fixture
def alerting_pair(tmp_path_factory, upstream_env):
    url = scratch_database_url("mariadb", tmp_path_factory)
    a = Kylon(url, {**upstream_env, **ALERT_ENV}, name="alerts-a")
    b = Kylon(url, {**upstream_env, **ALERT_ENV}, name="alerts-b")
    set_meter_price(a)
    yield a, b
    a.stop()
    b.stop()
    drop_database(url)


def test_two_processes_deliver_each_crossing_once(alerting_pair, receiver):
    a, b = alerting_pair
    webhook_id, path = receiver.webhook(a)
    time.sleep(1)  # b's prices refreshed (0.5 s)
    agents = [agent_with_thresholds(a, "1", "50%,10%,0") for _ in range(4)]
    # Calls through both processes drain every agent past all three thresholds.
    for i, (agent, key) in enumerate(agents):
        spend(a if i % 2 else b, key, "0.6")
        spend(b if i % 2 else a, key, "0.35")
        spend(a, key, "0.06")
    # Keys expiring: both processes' watchers see them at the same moment.
    soon = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)).isoformat()
    keys = [a.create_key(agents[0][0]["id"], f"k{i}", expires_at=soon) for i in range(5)]
    got = receiver.got(path, count=4 * 3 + 5, timeout=20)
    low = sorted((d["data"]["agent_id"], d["data"]["threshold"]) for d in got if d["type"] == "low_balance")
    assert low == sorted((agent["id"], t) for agent, _ in agents for t in ("50%", "10%", "0"))
    assert sorted(d["data"]["key_id"] for d in got if d["type"] == "key_expiring") == sorted(k["id"] for k in keys)
    # Each event once, each delivery once, each sent in one attempt.
    assert len(got) == 17 and len({d["id"] for d in got}) == 17
    assert all(receiver.attempts[path, d["delivery"]] == 1 for d in got)
    rows = deliveries(a, webhook_id)
    assert len(rows) == 17 and all(r["status"] == "delivered" and r["attempts"] == 1 for r in rows)
    # The events were won by one process or the other: counted once in all.
    fired = sum(metric(k, "kylon_alert_events_total", kind=kind) for k in (a, b)
                for kind in ("low_balance", "key_expiring"))
    assert fired == 17
    sent = sum(metric(k, "kylon_webhook_deliveries_total", outcome="delivered") for k in (a, b))
    assert sent == 17


def test_the_documented_check_takes_kylons_signature_and_nothing_else():
    from kylon.alerts import signature

    verified = documented_check()
    body, now = b'{"id": 1, "type": "test"}', int(time.time())
    assert verified("whsec_right", body, signature("whsec_right", now, body))
    assert not verified("whsec_wrong", body, signature("whsec_right", now, body))
    assert not verified("whsec_right", body + b" ", signature("whsec_right", now, body))
    assert not verified("whsec_right", body, signature("whsec_right", now - 3600, body))
    assert not verified("whsec_right", body, "")
