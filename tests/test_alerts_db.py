"""What makes alerts once-only across processes, at the database itself (on
SQLite and MariaDB): the event's unique index lets only the first INSERT of
a crossing enqueue deliveries, and the conditional claim lets only one
claimer take a delivery, however many claim at the same moment."""

import datetime
import threading

import pytest

from kylon import admin_webhooks, alerts
from kylon.models import AlertEvent, WebhookDelivery, database, open_database, utcnow

from .conftest import drop_database, scratch_database_url


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def db(request, tmp_path_factory):
    url = scratch_database_url(request.param, tmp_path_factory)
    handle = open_database(url)
    yield handle
    handle.close()
    drop_database(url)


def test_a_crossing_fires_once(db):
    hook = admin_webhooks.create_webhook("http://127.0.0.1:9/hook", actor="test")
    data = {"agent_id": 1}
    assert alerts.fire(alerts.LOW_BALANCE, 1, "20%", "7", data, [hook["id"]]) is True
    # The same crossing again (another process, or this one after a restart): nothing more.
    assert alerts.fire(alerts.LOW_BALANCE, 1, "20%", "7", data, [hook["id"]]) is False
    # Another threshold, or the same one after a new grant (epoch), is a new crossing.
    assert alerts.fire(alerts.LOW_BALANCE, 1, "5%", "7", data, [hook["id"]]) is True
    assert alerts.fire(alerts.LOW_BALANCE, 1, "20%", "8", data, [hook["id"]]) is True
    events = AlertEvent.select().where(AlertEvent.kind == alerts.LOW_BALANCE, AlertEvent.subject_id == 1)
    assert sorted((e.threshold, e.epoch) for e in events) == [("20%", "7"), ("20%", "8"), ("5%", "7")]
    assert WebhookDelivery.select().where(WebhookDelivery.webhook == hook["id"]).count() == 3


def test_claimers_at_the_same_moment_never_take_one_delivery_twice(db):
    hook = admin_webhooks.create_webhook("http://127.0.0.1:9/claims", actor="test")
    ids = [alerts.enqueue_test(hook["id"]) for _ in range(150)]
    now = utcnow() + datetime.timedelta(seconds=1)
    lease = now + datetime.timedelta(seconds=60)
    start = threading.Barrier(3)
    taken = []

    def claimer():
        database.connect(reuse_if_open=True)
        try:
            start.wait()
            got = []
            while batch := alerts.claim_due(now, lease, limit=10):
                got.extend(d[0] for d in batch)
            taken.append(got)
        finally:
            database.close()

    threads = [threading.Thread(target=claimer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # (the first test's deliveries are due too)
    claimed = [d for got in taken for d in got if d in ids]
    assert len(taken) == 3 and sorted(claimed) == sorted(ids)  # each once, none lost
    rows = WebhookDelivery.select().where(WebhookDelivery.id.in_(ids))
    assert {(r.attempts, r.next_attempt_at) for r in rows} == {(1, lease)}
    # A claim left by a process that died runs out: due again after the lease.
    assert alerts.claim_due(lease - datetime.timedelta(seconds=1), lease) == []
    again = alerts.claim_due(lease, lease + datetime.timedelta(seconds=60), limit=200)
    again = [d for d in again if d[0] in ids]
    assert sorted(d[0] for d in again) == sorted(ids) and {d[1] for d in again} == {2}
